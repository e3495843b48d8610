# Gateway entry point. Grows with the runtime issue; for now it only proves the
# app package imports on the board.
import gateway  # noqa: F401
