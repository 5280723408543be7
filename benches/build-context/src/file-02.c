int f02(void) { return 02; }
