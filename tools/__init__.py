"""Tools of the repository that are not part of the installed package (run from the repository's root)."""
