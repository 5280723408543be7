int f27(void) { return 27; }
