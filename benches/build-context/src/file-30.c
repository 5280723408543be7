int f30(void) { return 30; }
