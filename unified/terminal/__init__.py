"""Terminal output: progress of long phases and tables, both drawn by rich."""
