import sys

from services.cli import main

main(["worker", *sys.argv[1:]])
