"""Records and tables. Reads records only; never imports the trainer."""
