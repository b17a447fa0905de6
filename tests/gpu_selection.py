"""The tests ``pytest -m gpu`` runs: the ones whose answer can change on an accelerator.

``benchmarks/device_check.sh`` runs them with JAX on the GPU. They are chosen by
function name (not by file), so moving a test between files keeps it selected;
``conftest.py`` adds the ``gpu`` marker to every collected test named here and, when
``-m gpu`` is asked for, fails the collection if a name matches no test (a renamed test
must be renamed here too).

Why each group can differ on a GPU: sharding (the real device count, not 8 fake CPU
devices), bfloat16 (GPUs compute bf16 natively, XLA:CPU upcasts it), attacks inside
the ball and the bounds (TF32 matrix products and fused kernels round differently),
trace counts (the jitted step must not retrace on another backend), resume after a
kill (bit-identical only if the kernels are deterministic or the compiled program is
reused), vmapped seeds equal to sequential runs (batched matrix products may pick
other kernels).
"""

GPU_TESTS = {
    "sharding": (
        "test_every_device_equals_one_device",
        "test_padded_steps_leave_state_unchanged",
    ),
    "bf16": (
        "test_bf16_keeps_float32_parameters_and_outputs_and_rounds_like_bf16",
        "test_bf16_attacks_stay_inside_the_ball_and_the_bounds",
        "test_bf16_train_step_loss_within_2_percent_of_float32",
    ),
    "attacks_in_ball_and_bounds": (
        "test_inside_ball_and_bounds",
        "test_apgd_inside_ball_and_bounds",
        "test_sides_bisection_ball_and_bounds",
        "test_square_inside_ball_bounds_per_sample",
    ),
    "trace_counts": (
        "test_step_traces_once_across_calls_and_padding",
        "test_jit_forwards_jax_jit_arguments_and_traces_once",
        "test_jit_traces_once_for_traced_per_sample_eps",
        "test_jit_traces_once_and_no_nan_at_extremes",
        "test_apgd_traces_once_for_two_radii",
    ),
    "resume_after_kill": ("test_kill_9_then_the_same_command_gives_the_same_report",),
    "vmapped_seeds": ("test_vmapped_seeds_equal_sequential_runs_and_resume",),
}
# The resume-equality subset the device check also runs without the compilation cache
# and with deterministic GPU kernels (a ``pytest -k`` expression): the two kills inside
# the training loop (one before the first checkpoint, one after it) and the vmapped seeds.
RESUME_SUBSET = "(kill_9 and step) or vmapped_seeds_equal"


def names() -> dict[str, str]:
    """Test function name -> its group."""
    return {name: group for group, tests in GPU_TESTS.items() for name in tests}
