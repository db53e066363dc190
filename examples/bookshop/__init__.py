"""A small bookshop and the parser that scrapes it: the `--parser` example (README.md)."""
