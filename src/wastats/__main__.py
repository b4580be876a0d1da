from wastats.cli import main

main()
