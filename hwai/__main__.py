from hwai.cli import main

main()
