"""improvd's tests."""

# A JACK process callback in Python waits for the GIL: with Python's 5 ms slice it misses a
# 2.7 ms cycle whenever another thread holds it (an overrun, and its MIDI lost). improvd's
# daemon sets 0.5 ms for the same reason; so do the tests' JACK clients, in the test process
# (tests/conftest.py) and in the peer processes.
GIL_SLICE_S = 0.0005
