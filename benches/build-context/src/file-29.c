int f29(void) { return 29; }
