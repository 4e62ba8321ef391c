"""Built-in backends. Each subpackage is a plugin on the same hook contract a third party uses."""
