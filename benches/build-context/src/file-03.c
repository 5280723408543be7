int f03(void) { return 03; }
