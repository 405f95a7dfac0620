import sys

from services.cli import main

main(["scheduler", *sys.argv[1:]])
