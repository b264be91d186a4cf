"""The tests' fault hook: a function called before every micro-batch a Trainer trains on.

The faults done in-process (an out-of-memory error, a second Ctrl-C mid-step, a crash, weights
turned NaN, a disk filled for real) are done from here, at a chosen step: the trainer itself has
no hook for them. It wraps the trainer's data iterator (`Trainer._micro_batches`), so an error
comes out of `train_step` as a real one would, with the micro-batch already drawn.
"""


def inject(trainer, fault):
    """Call `fault(step, micro_batch)` before each micro-batch `trainer` trains on (the number of the
    step being taken, 0 first, and the micro-batch's size); no fault: nothing. Returns the trainer."""
    if fault is None:
        return trainer
    micro_batches = trainer._micro_batches

    def with_fault(drawn):
        for x, y, docs in micro_batches(drawn):
            fault(trainer.step, x.size(0))
            yield x, y, docs

    trainer._micro_batches = with_fault
    return trainer
