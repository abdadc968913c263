"""The local launcher: the inferq command line, and the local stack that ``inferq up`` runs."""
