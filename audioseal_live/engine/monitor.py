"""Live detector monitor: is the mark there, and which 16 bits does it carry?

Fed through its own SPSC ring, either by the worker (the marked output, a digital monitor) or
by a capture callback (a loopback or room mic, to verify the mark after the real chain). Runs
on its own thread so that detection never delays the output; if it falls behind it drops
audio (counted), never the output. The detector first searches a batch of two, the signal and
its inverse (real chains flip polarity), at every grid phase the model reads bits at. Once one
polarity has carried the mark for a vote window, it locks onto that polarity and its surest
phase (the stream narrowed, state intact): 1/(2P) of the work from then on. If the mark is then
lost for a while (a re-routed chain), it searches again, and every ``relock_s`` anyway: drift
edits and a capture device's own clock slide the audio against the frame grid over time.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from audioseal_live.engine.mark_level import QUIET_RMS
from audioseal_live.engine.metrics import Detection
from audioseal_live.engine.model import (
    MODEL_RATE,
    FrameDetector,
    best_phase,
    decode_bits,
    guess_polarity,
    inverted_wins,
    polarity_told,
)
from audioseal_live.engine.resample import live_resampler
from audioseal_live.engine.ring import Fifo, RingBuffer

log = logging.getLogger(__name__)

# A chunk of the monitored signal under QUIET_RMS tells nothing about the mark: the engine
# keeps the mark 20 dB under the signal (engine.mark_level), so a pause carries none. Such
# chunks are left out of the smoothed probability, which holds its value through a pause
# instead of reporting the voice unmarked each time it stops...
QUIET_HOLD_S = 5.0  # ... for so long: a longer silence counts as unmarked (a chain gone mute)


class DetectorMonitor:
    def __init__(
        self,
        detector: FrameDetector,
        sample_rate: int,
        message: Callable[[], Sequence[int]],
        chunk16: int = 320 * 5,  # 100 ms: detection needs no low latency, batching is cheaper
        smooth_s: float = 1.0,
        vote_s: float = 3.0,
        history_s: float = 10.0,
        threshold: float = 0.5,
        source: str = "output",
        lock_p: float = 0.8,
        unlock_s: float = 2.0,
        relock_s: float = 20.0,
    ) -> None:
        self.det = detector
        self.rate = int(sample_rate)
        self.message = message
        self.chunk16 = int(chunk16)
        self.threshold = threshold
        self.source = source
        self.nbits = int(detector.nbits)
        self.phases = int(detector.phases)
        self.ring = RingBuffer(4 * self.rate)  # 4 s of slack before dropping
        self.down = live_resampler(self.rate, MODEL_RATE)
        self.fifo16 = Fifo(2 * self.chunk16)
        chunk_s = self.chunk16 / MODEL_RATE
        self._n_smooth = max(1, round(smooth_s / chunk_s))
        self._n_vote = max(1, round(vote_s / chunk_s))
        self._probs = np.zeros((2, self._n_smooth))
        self._heard = np.zeros(self._n_smooth, dtype=bool)  # a chunk above QUIET_RMS
        self._held = np.zeros(2)  # the smoothed probabilities before the last quiet spell
        self._n_hold = max(1, round(QUIET_HOLD_S / chunk_s))
        self._quiet_run = 0  # quiet chunks in a row
        self._vote_sum = np.zeros((2, self._n_vote, self.phases, self.nbits))
        self._vote_cnt = np.zeros((2, self._n_vote))
        self._hist: deque[float] = deque(maxlen=max(1, round(history_s / chunk_s)))
        self.lock_p = lock_p
        self._n_unlock = max(1, round(unlock_s / chunk_s))
        self._n_relock = max(1, round(relock_s / chunk_s))
        self._filled = 0  # probability entries since start (kept across re-searches)
        self.lock: tuple[int, int] | None = None  # (polarity, phase) once locked
        self.locks = 0
        self._since_search = 0  # chunks since the last (re)start of the search
        self._lost = 0  # chunks in a row below threshold while locked
        self.chunks = 0
        self.errors = 0
        # A model with a message code: bits from its reader over the vote window
        self.code = detector.code_stream(vote_s)
        self._detection = Detection(source=source)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def detection(self) -> Detection:
        return self._detection

    def reset(self, keep_polarity: bool = False) -> None:
        """Start afresh: probabilities cleared, then a search. ``keep_polarity``: the message
        code's last decided polarity stays (the mark was lost, the chain is the same one)."""
        self._probs[:] = 0
        self._heard[:] = False
        self._held[:] = 0
        self._quiet_run = 0
        self._filled = 0
        self._vote_sum[:] = 0
        self._vote_cnt[:] = 0
        if self.code is not None:
            self.code.reset(keep_polarity)
        self._search()

    def warm_up(self) -> None:
        """Let the detector prepare before the audio starts (a traced detector traces its
        layouts: ~0.3 s of Python each that would hold the GIL beside the audio callbacks)."""
        self.det.warm_up(self.chunk16)
        if self.code is not None:
            self.code.warm_up()

    def _search(self) -> None:
        """(Re)start the search: both polarities, every phase. Probabilities and votes carry
        on (they age out of their windows), so a scheduled re-search shows no dip; the lock
        waits for a vote window of the search's own."""
        self.det.reset(batch_size=2)
        self.lock = None
        self._since_search = 0
        self._lost = 0

    def step(self) -> bool:
        avail = self.ring.fill
        if avail <= 0:
            return False
        self.fifo16.push(self.down.process(self.ring.read(avail)))
        while len(self.fifo16) >= self.chunk16:
            self._process(self.fifo16.pop(self.chunk16))
        return True

    def _process(self, block: np.ndarray) -> None:
        i = self.chunks % self._n_smooth
        v = self.chunks % self._n_vote
        self.chunks += 1
        self._since_search += 1
        self._filled += 1
        if self.lock is None:  # search: x and -x, every phase
            rows, phases = [0, 1], list(range(self.phases))
            p, logits = self.det.process(np.stack([block, -block]))  # (2,T), (2,P,nbits,T)
        else:  # locked: one polarity, one phase; the others' entries age out as zeros
            rows, phases = [self.lock[0]], [self.lock[1]]
            p, logits = self.det.process((block if rows[0] == 0 else -block)[None])
        detected = p > self.threshold  # vote over detected samples only
        self._probs[:, i] = 0.0
        self._probs[rows, i] = p.mean(axis=1)
        self._vote_cnt[:, v] = 0
        self._vote_cnt[rows, v] = detected.sum(axis=1)
        self._vote_sum[:, v] = 0
        sums = np.einsum("bpkt,bt->bpk", logits, detected.astype(logits.dtype))
        self._vote_sum[np.ix_(rows, [v], phases)] = sums[:, None]
        quiet = float(np.sqrt(np.mean(block * block))) < QUIET_RMS
        self._quiet_run = self._quiet_run + 1 if quiet else 0
        self._heard[i] = not quiet or self._quiet_run > self._n_hold
        if self._heard[i]:  # over the chunks of the window that had something to say
            n = min(self._filled, self._n_smooth)  # entries so far
            last = [k for k in ((i - j) % self._n_smooth for j in range(n)) if self._heard[k]]
            self._held = self._probs[:, last].mean(axis=1)
        smoothed = self._held  # in a pause: frozen at its start
        read = None
        if self.code is not None:
            self.code.push(block)
            read = self.code.read()
        settled = True  # whether anything but the message tells the polarity
        guessed = False
        if read is not None and read.inverted is not None:
            # The code's polarity check, surer than comparing P(marked) of x and -x (which a
            # detector trained with polarity flips finds in both): it overrules a lock taken
            # on the other polarity, which is searched again (the bits read complemented).
            b = int(read.inverted)
            if self.lock is not None and self.lock[0] != b:
                log.info("the message code reads the other polarity: searching again")
                self._search()
        elif self.lock is not None:
            b = self.lock[0]
        elif self.code is not None:
            # Until the code's own check has decided, nothing tells: a detector trained with
            # polarity flips finds its mark in x and -x alike, and picking the higher one
            # showed 'inverted' and the complement for the first second of a stream (review).
            b, settled = 0, False
        else:
            b = int(inverted_wins(smoothed[0], smoothed[1]))
            settled = polarity_told(smoothed[0], smoothed[1])
        cnt = self._vote_cnt[b].sum()
        bits: tuple[int, ...] = ()
        conf: tuple[float, ...] = ()
        match: bool | None = None
        mean_logit: np.ndarray | None = None
        # the window holds the code (read is only ever there with a code)
        code_there = read is not None and read.sync >= self.code.sync_min  # type: ignore[union-attr]
        if self.code is not None:
            # Bits only from a window that holds the code: with the network's detection
            # alone (cnt > 0) a weak read showed wrong bits as MISMATCH (1-2 bits off under
            # noise, a tone, speech after a pause: 26 of 74 wrong readings, review).
            if read is not None and code_there:
                mean_logit = -read.z if b else read.z  # an inverted chain flips every bit
                if not settled:
                    b, mean_logit, guessed = guess_polarity(b, mean_logit, tuple(self.message()))
        elif cnt > 0:
            mean_logits = self._vote_sum[b].sum(axis=0) / cnt  # (P, nbits)
            mean_logit = mean_logits[best_phase(mean_logits)]
        if not guessed:  # a polarity read off the message is shown, never locked onto
            self._update_lock(b, float(smoothed[b]), code_there)
        shown = float(smoothed[b])
        if read is not None:
            # The code's own evidence, as the detector's offline P: it survives the
            # telephone band where the network's detection does not.
            shown = max(shown, read.p_marked)
        if mean_logit is not None:
            bits, conf = decode_bits(mean_logit)
            expected = tuple(int(x) for x in self.message())
            # audio not detected as marked has no message to match (its bits are noise), as
            # detect says; the bits are still shown
            match = bits == expected if expected and shown >= self.threshold else None
        self._hist.append(shown)
        self._detection = Detection(
            prob_chunk=float(self._probs[b, i]),
            prob_smoothed=shown,
            bits=bits,
            bit_confidence=conf,
            match=match,
            inverted=bool(b),
            polarity_from_message=guessed,
            source=self.source,
            chunks=self.chunks,
            history=tuple(self._hist),
            dropped_samples=self.ring.overflow_samples,
            code_sync=None if read is None else read.sync,
            quiet=quiet,
        )

    def _update_lock(self, polarity: int, smoothed: float, code_there: bool = False) -> None:
        """Lock once one polarity carried the mark for a vote window; while locked, count the
        mark lost only when neither the network nor the message code finds it (a noisy
        pause: the network's P fell to 0.16 while the code still read sync 7.6, the reset
        forgot the code's polarity verdict, and the network then picked -x, review)."""
        if self.lock is None:
            if self._since_search >= self._n_vote and smoothed >= self.lock_p:
                cnt = self._vote_cnt[polarity].sum()
                if cnt > 0:
                    phase = best_phase(self._vote_sum[polarity].sum(axis=0) / cnt)
                    self.det.narrow(polarity, phase)
                    self.lock = (polarity, phase)
                    self.locks += 1
                    self._lost = 0
                    log.info("monitor locked on polarity %s, phase %d", "-+"[polarity == 0], phase)
            return
        self._lost = self._lost + 1 if smoothed < self.threshold and not code_there else 0
        if self._lost >= self._n_unlock:
            log.info("monitor lost the mark for %d chunks: searching again", self._lost)
            self.reset(keep_polarity=True)
        elif self._since_search >= self._n_vote + self._n_relock:
            self._search()  # the grid phase may have slid: look again

    def run(self) -> None:
        ctx: Any = None
        if "torch" in sys.modules:
            import torch

            ctx = torch.inference_mode()
            ctx.__enter__()
        idle = min(0.02, 0.25 * self.chunk16 / MODEL_RATE)
        try:
            while not self._stop.is_set():
                try:
                    if not self.step():
                        time.sleep(idle)
                except Exception:  # detection is advisory: log, keep the audio running
                    self.errors += 1
                    if self.errors <= 3:
                        log.exception("detector monitor failed")
                    time.sleep(0.1)
        finally:
            if ctx is not None:
                ctx.__exit__(None, None, None)

    def start(self) -> None:
        self.reset()
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="audioseal-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.det.close()
