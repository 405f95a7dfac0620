import sys

from services.cli import main

main(["api", *sys.argv[1:]])
