# Included after the project's Makefile by bench scripts:
#   make -f Makefile -f bench/lib/bench.mk build/bench/spool_fill
# builds a bench helper the way tests/helpers are built (same flags, linked
# against every object of src/ but main.o), without editing the Makefile.
$(BUILD)/bench/%: bench/lib/%.c $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)
