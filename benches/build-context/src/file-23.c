int f23(void) { return 23; }
