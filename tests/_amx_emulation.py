"""Building a C shim against the scalar AMX tile emulation (q4core/src/gemm_amx_emu.h): the AMX kernels' logic
(tiling, strides, remainders, K blocking) is tested on machines without AMX, and against the hardware's rules."""
import ctypes
import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest


def build_emulation(tmp_path_factory, shim_source, name):
    """``ctypes.CDLL`` of ``shim_source`` compiled with the package's C sources on the include path; skips
    the test where there is no C compiler or the machine is not x86-64."""
    cc = shutil.which(os.environ.get("CC", "cc").split()[0])
    if cc is None or platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("needs a C compiler on x86-64 to build the AMX emulation")
    import q4core
    work = tmp_path_factory.mktemp(name)
    (work / "shim.c").write_text(shim_source)
    lib_path = work / f"lib{name}.so"
    src_dir = Path(q4core.__file__).parent / "src"
    subprocess.run([cc, "-O1", "-shared", "-fPIC", "-I", str(src_dir), str(work / "shim.c"), "-o", str(lib_path)],
                   check=True, capture_output=True)
    return ctypes.CDLL(str(lib_path))
