"""The embedded demo: tasks written on the spot, the protocol on the shipped mini-ViT, heatmaps and scores."""
