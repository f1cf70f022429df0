"""Every Triton kernel compiles for the GPUs users train on (Hopper, sm_90, and Ampere, sm_80), without a GPU: Triton
compiles ahead of time to a cubin with the ptxas it ships. Run in a subprocess, since the test session may use Triton's
interpreter (which replaces the kernels)."""

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

SCRIPT = textwrap.dedent(
    """
    import sys
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from pml_hyperbolic.backends import triton_cdist, triton_dasgupta, triton_lca, triton_rows

    F, I = "*fp32", "i32"
    arch = int(sys.argv[1])

    def sig(names, types, constexprs):
        s = dict(zip(names, types))
        s.update({name: "constexpr" for name in constexprs})
        return s

    kernels = [
        (triton_cdist._forward, ["x_ptr", "y_ptr", "d_ptr", "q_ptr", "a_ptr", "b_ptr", "N", "M", "D", "c_hi", "c_lo",
                                 "kappa"], [F] * 6 + [I] * 3 + ["fp32"] * 3,
         {"STORE_Q": True, "BM": 64, "BN": 64, "BK": 32}, 8),
    ]
    for kernel in (triton_cdist._backward_x, triton_cdist._backward_y):
        for bd in triton_cdist._BD_CHOICES:
            kernels.append((kernel, ["x_ptr", "y_ptr", "g_ptr", "q_ptr", "a_ptr", "b_ptr", "out_ptr", "N", "M", "D",
                                     "two_c", "inv_sqrt_c", "tiles_per_split"],
                            [F] * 7 + [I] * 3 + ["fp32"] * 2 + [I], {"BM": 64, "BN": 64, "BD": bd}, 8))
    for kernel, extra in ((triton_rows._tangent_forward, []), (triton_rows._tangent_backward, ["g_ptr"])):
        kernels.append((kernel, ["u_ptr", *extra, "out_ptr", "N", "D", "sqrt_hi", "sqrt_lo", "clip_r", "rho_max"],
                        [F] * (2 + len(extra)) + [I] * 2 + ["fp32"] * 4, {"CLIP": True, "BR": 16, "BD": 128}, 4))
    kernels.append((triton_rows._relaxed_forward, ["m_ptr", "s_ptr", "p_ptr", "R", "K", "C", "scale", "sign"],
                    [F] * 3 + [I] * 3 + ["fp32"] * 2, {"BC": 128}, 4))
    kernels.append((triton_rows._relaxed_backward, ["m_ptr", "s_ptr", "p_ptr", "g_ptr", "out_ptr", "R", "K", "C",
                                                    "inv_gamma", "sign"], [F] * 5 + [I] * 3 + ["fp32"] * 2,
                    {"BC": 128}, 4))
    blocks = {"BT": triton_dasgupta._BT, "BD": triton_dasgupta._BD}
    for modes in ({"NORMALIZE": True, "W_MODE": 2, "LEARNED": False},
                  {"NORMALIZE": False, "W_MODE": 0, "LEARNED": True}):
        kernels.append((triton_dasgupta._forward_kernel, ["x_ptr", "xs0", "xs1", "tri_ptr", "ts0", "ts1", "w_ptr",
                                                         "e_ptr", "es0", "es1", "r_ptr", "loss_ptr", "save_ptr", "T",
                                                         "D", "DE", "G", "GE", "L", "rho", "one_minus_rho", "tau"],
                        [F, I, I, "*i64", I, I, F, F, I, I, F, F, F] + [I] * 6 + ["fp32"] * 3, {**modes, **blocks}, 4))
    for grads in ((True, True, True), (True, False, False)):
        modes = dict(zip(["GRAD_X", "GRAD_W", "GRAD_R"], grads), NORMALIZE=True, LEARNED=grads[2])
        kernels.append((triton_dasgupta._backward_kernel, ["x_ptr", "xs0", "xs1", "tri_ptr", "ts0", "ts1", "save_ptr",
                                                          "g_ptr", "gs", "r_ptr", "gx_ptr", "gw_ptr", "gr_ptr", "T",
                                                          "D", "G", "rho", "one_minus_rho", "tau"],
                        [F, I, I, "*i64", I, I, F, F, I, F, F, F, F] + [I] * 3 + ["fp32"] * 3, {**modes, **blocks}, 4))
    compiled = 0
    for kernel, names, types, constexprs, warps in kernels:
        src = ASTSource(fn=kernel, signature=sig(names, types, constexprs), constexprs=constexprs)
        triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})
        compiled += 1
    print("compiled", compiled)
    """
)


@pytest.mark.parametrize("arch", [90, 80])
def test_triton_kernels_compile_for_gpus(arch, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(arch)], capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "compiled 13" in result.stdout
