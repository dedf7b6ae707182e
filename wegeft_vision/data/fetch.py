"""Download of the FGVC split files named in the manifests, verified against their sha256."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from pathlib import Path

from ..files import sha256_of, write_atomic
from .manifests import Manifest, load_manifest, read_manifest
from .registry import FGVC


def fetch_fgvc_splits(
    dataset: str, dest: str | Path, manifest: Manifest | str | Path | None = None, timeout: float = 30.0
) -> list[Path]:
    """Download every split file of an FGVC dataset to `<dest>/<dataset>/<split>.json` and verify its sha256.

    A file already present with the right checksum is kept; nothing is written unless its checksum matches.

    Args:
        dataset: canonical name or alias (`cub`, ...).
        dest: destination folder (the `--splits` folder of `data check`).
        manifest: a `Manifest` or manifest file; default: the bundled one.
        timeout: seconds per request.

    Returns:
        The paths of the split files.

    Raises:
        OSError: a URL that cannot be reached (offline, moved); the message names the URL.
        ValueError: a downloaded file whose sha256 differs from the manifest's.
    """
    if manifest is None:
        manifest = load_manifest(f"{FGVC}/{dataset}")
    elif not isinstance(manifest, Manifest):
        manifest = read_manifest(manifest)
    if manifest.benchmark != FGVC:
        raise ValueError(f"fetch-splits handles FGVC datasets; {manifest.name} is a {manifest.benchmark} dataset")
    folder = Path(dest) / manifest.name
    paths = []
    for entry in manifest.splits.values():
        if not entry.url or not entry.sha256:
            raise ValueError(f"manifest of {manifest.name}: split {entry.name} has no url and sha256 to fetch")
        path = folder / entry.file
        paths.append(path)
        if path.is_file() and sha256_of(path) == entry.sha256:
            continue
        try:
            with urllib.request.urlopen(entry.url, timeout=timeout) as response:
                data = response.read()
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise OSError(
                f"cannot download {entry.url} ({reason}); without network access, copy {entry.file} of "
                f"{manifest.name} into {folder} by hand and run `wegeft-vision data check`"
            ) from err
        actual = hashlib.sha256(data).hexdigest()
        if actual != entry.sha256:
            raise ValueError(f"{entry.url}: sha256 {actual}, expected {entry.sha256}; the file was not saved")
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)
    return paths
