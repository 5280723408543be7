int f25(void) { return 25; }
