"""What goes into a model: images and their preprocessing, calibration sources, the bundled sample
photos, ImageNet labels, the zoo, and resolving a user's model argument (name, path, proto, module)."""
