int f22(void) { return 22; }
