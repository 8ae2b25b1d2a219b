"""What a user types: the ``scar`` command line (cli: one typer app, every error mapped to one
line and an exit code), ``scar infer`` (a file, a folder, a manifest, DICOM; locally or on Ray)
and ``make demo``. Thin shells over the rooms beside them."""
