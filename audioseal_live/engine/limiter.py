"""Soft peak limiter: the marked sum never exceeds the ceiling, and quiet audio is untouched.

No look-ahead (no added latency): the envelope is a peak hold with instant attack and an
exponential release, ``e[n] = max(|x[n]|, e[n-1] * r)``. Because ``e[n] >= |x[n]|`` and the
gain maps the envelope through a soft knee that tops out at the ceiling, ``|y| <= ceiling``
holds sample by sample. The recursion is evaluated vectorised in the log domain
(``log e[n] = max_k(log|x[k]| - (n-k)/tau)`` = a running max), so a chunk costs a few numpy ops.
"""

from __future__ import annotations

import numpy as np


class SoftLimiter:
    def __init__(
        self,
        sample_rate: int,
        threshold: float = 0.89,  # about -1 dBFS: the knee starts here
        ceiling: float = 0.98,  # hard bound of the output
        release_s: float = 0.08,
    ) -> None:
        if not 0 < threshold < ceiling <= 1.0:
            raise ValueError("need 0 < threshold < ceiling <= 1")
        self.threshold = float(threshold)
        self.ceiling = float(ceiling)
        self._per_sample = 1.0 / (release_s * sample_rate)  # log-decay per sample
        self._log_env = -np.inf  # state: log of the envelope after the last sample
        self.active_samples = 0  # samples whose gain was < 1 (shown in metrics)

    def reset(self) -> None:
        self._log_env = -np.inf

    def process(self, x: np.ndarray) -> np.ndarray:
        x = np.nan_to_num(np.asarray(x, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        n = x.shape[0]
        if n == 0:
            return x
        decayed_state = self._log_env - self._per_sample * n
        peak = float(np.max(np.abs(x)))
        if peak <= self.threshold and decayed_state <= np.log(self.threshold):
            # Fast path (the common case): nothing near full scale, keep the state decaying.
            self._log_env = max(decayed_state, np.log(peak) if peak > 0 else -np.inf)
            return x
        idx = np.arange(n, dtype=np.float64)
        with np.errstate(divide="ignore"):
            log_abs = np.log(np.abs(x).astype(np.float64))
        # e[n] = max(state*r^(n+1), max_{k<=n} |x_k| r^(n-k)) in the log domain
        run = np.maximum.accumulate(log_abs + idx * self._per_sample) - idx * self._per_sample
        carry = self._log_env - (idx + 1) * self._per_sample
        log_env = np.maximum(run, carry)
        self._log_env = float(log_env[-1])
        env = np.exp(log_env)
        span = self.ceiling - self.threshold
        over = np.maximum(env - self.threshold, 0.0)
        target = np.where(env > self.threshold, self.threshold + span * np.tanh(over / span), env)
        gain = np.where(env > self.threshold, target / np.maximum(env, 1e-12), 1.0)
        self.active_samples += int(np.count_nonzero(gain < 1.0))
        y = (x * gain).astype(np.float32)
        # Belt and braces against float rounding at the very top.
        np.clip(y, -self.ceiling, self.ceiling, out=y)
        return y
