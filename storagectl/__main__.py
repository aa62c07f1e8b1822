from storagectl.cli import main

main()
