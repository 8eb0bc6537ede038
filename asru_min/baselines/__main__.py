from .methods import main

main()
