ROOT = "src is the import root"
