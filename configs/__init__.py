"""The YAML configs (method, fit, data, protocol presets), shipped inside the package as `wegeft_vision.configs`."""
