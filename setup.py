"""Build q4core's Cython extensions.

Every ``q4core/_*.pyx`` becomes an extension module compiled with ``-O3``.  OpenMP is
probed the way scikit-learn does (compile and link a tiny program with ``-fopenmp``);
when the probe fails the extensions are built serially and ``q4core.build_info()``
says so at run time.  We never pass ``-march=native``: SIMD kernels carry their own
``__attribute__((target(...)))`` and are chosen at run time from CPUID.
"""
import glob
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join("q4core", "src")

OPENMP_PROBE = r"""
#include <omp.h>
#include <stdio.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    printf("%d", n > 0);
    return 0;
}
"""


def openmp_flags():
    """Return (compile_args, link_args) for OpenMP, or ([], []) when unsupported."""
    if os.environ.get("Q4CORE_DISABLE_OPENMP"):
        return [], []
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc.split()[0]) is None:
        return [], []
    flags = ["-fopenmp"]
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        exe = os.path.join(tmp, "probe")
        with open(src, "w") as fh:
            fh.write(OPENMP_PROBE)
        try:
            subprocess.run(cc.split() + flags + [src, "-o", exe], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            out = subprocess.run([exe], check=True, capture_output=True, text=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return [], []
    return (flags, flags) if out.strip() == "1" else ([], [])


def extensions():
    omp_compile, omp_link = openmp_flags()
    print(f"q4core: OpenMP {'enabled' if omp_compile else 'NOT available - serial build'}",
          file=sys.stderr)
    macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
              ("Q4CORE_OPENMP", "1" if omp_compile else "0")]
    exts = []
    for pyx in sorted(glob.glob(os.path.join("q4core", "_*.pyx"))):
        name = "q4core." + os.path.splitext(os.path.basename(pyx))[0]
        exts.append(Extension(
            name, [pyx],
            include_dirs=[np.get_include(), SRC],
            define_macros=macros,
            extra_compile_args=["-O3", "-fno-strict-aliasing"] + omp_compile,
            extra_link_args=omp_link,
            depends=glob.glob(os.path.join(SRC, "*.h")),
        ))
    return cythonize(exts, compiler_directives={"language_level": "3"}, quiet=True)


setup(ext_modules=extensions(), cmdclass={"build_ext": build_ext})
