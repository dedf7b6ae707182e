"""The split manifests, shipped inside the package as `wegeft_vision.data_splits`."""
