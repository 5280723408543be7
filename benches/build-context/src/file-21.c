int f21(void) { return 21; }
