/** Stopping a command cleanly on Ctrl-C or SIGTERM, and at once on a second one. */

const SIGNAL_EXIT_CODES = { SIGINT: 130, SIGTERM: 143 } as const;
export type StopSignal = keyof typeof SIGNAL_EXIT_CODES;

/**
 * While installed, Ctrl-C (SIGINT) or SIGTERM calls `onInterrupt`; a second one before `rearm()` runs
 * `beforeExit` (to save what can be saved) and exits at once, with the shell's code for the signal (128 + its
 * number).
 */
export interface InterruptHandler {
  /** Lets the next signal interrupt again (say, the next reply) instead of exiting. */
  rearm(): void;
  uninstall(): void;
  /** The exit code for the last signal received (130 for SIGINT, 143 for SIGTERM), null when none. */
  readonly exitCode: number | null;
}

export function handleInterrupts(onInterrupt: (signal: StopSignal) => void, beforeExit?: () => void): InterruptHandler {
  let pressed = false;
  let last: StopSignal | null = null;
  const handler = (signal: StopSignal) => {
    last = signal;
    if (pressed) {
      beforeExit?.();
      process.exit(SIGNAL_EXIT_CODES[signal]);
    }
    pressed = true;
    onInterrupt(signal);
  };
  for (const signal of Object.keys(SIGNAL_EXIT_CODES) as StopSignal[]) process.on(signal, handler);
  return {
    rearm: () => {
      pressed = false;
    },
    uninstall: () => {
      for (const signal of Object.keys(SIGNAL_EXIT_CODES) as StopSignal[]) process.off(signal, handler);
    },
    get exitCode() {
      return last === null ? null : SIGNAL_EXIT_CODES[last];
    },
  };
}
