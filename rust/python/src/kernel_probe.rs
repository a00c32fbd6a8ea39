//! Test-support functions of `mer._core` that run one dot-product kernel on raw inputs, so that
//! Python property tests can compare the scalar and SIMD kernels. The core side is
//! `mer_core::quant::probe`.

use mer_core::quant::probe::{self, RowKernel};
use mer_core::quant::GgmlType;
use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::{run_detached, to_py_err};

/// Computes the dot product of each of `n_rows` weight rows with one activation, using the
/// kernel set `isa` ("scalar" or "avx2"), and returns one float32 per row.
///
/// `ggml_type` is "q4_0", "q4_1", "q8_0", "f16" or "f32", and `rows` contains the rows one after
/// another in ggml's layout. Quantized types take the activation as int8 `quants` and float32
/// `scales`, one per block of 32, and each block's sum is computed from its quants. f16 and
/// f32 take float32 `values`. `four_rows` runs the four-row kernel, which needs the AVX2 set, a
/// quantized type and a multiple of 4 rows. Invalid inputs raise ValueError.
#[pyfunction]
#[pyo3(signature = (isa, ggml_type, rows, n_rows, *, values=None, scales=None, quants=None, four_rows=false))]
#[allow(clippy::too_many_arguments)]
fn kernel_dot<'py>(
    py: Python<'py>,
    isa: &str,
    ggml_type: &str,
    rows: &[u8],
    n_rows: usize,
    values: Option<PyReadonlyArray1<'py, f32>>,
    scales: Option<PyReadonlyArray1<'py, f32>>,
    quants: Option<PyReadonlyArray1<'py, i8>>,
    four_rows: bool,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let kernels = probe::kernels_by_name(isa).map_err(|e| to_py_err(py, e))?;
    let weight_type = probe::kernel_type_by_name(ggml_type).map_err(|e| to_py_err(py, e))?;
    let quantized = matches!(weight_type, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0);

    let x = if quantized {
        if values.is_some() {
            return Err(PyValueError::new_err(format!(
                "{ggml_type} weights take the activation as quants and scales, not values"
            )));
        }
        let (Some(scales), Some(quants)) = (scales, quants) else {
            return Err(PyValueError::new_err(format!(
                "missing quants or scales: {ggml_type} weights need the activation as int8 quants and float32 scales"
            )));
        };
        let scales: Vec<f32> = scales.as_array().iter().copied().collect();
        let quants: Vec<i8> = quants.as_array().iter().copied().collect();
        probe::quantized_activation(&scales, &quants).map_err(|e| to_py_err(py, e))?
    } else {
        if scales.is_some() || quants.is_some() {
            return Err(PyValueError::new_err(format!(
                "{ggml_type} weights take the activation as values, not quants and scales"
            )));
        }
        let Some(values) = values else {
            return Err(PyValueError::new_err(format!(
                "missing values: {ggml_type} weights need the activation as float32 values"
            )));
        };
        probe::float_activation(values.as_array().iter().copied().collect())
    };

    let row_kernel = if four_rows { RowKernel::Four } else { RowKernel::One };
    let rows = rows.to_vec();
    let dots = run_detached(py, || probe::row_dots(&kernels, weight_type, &rows, n_rows, &x, row_kernel))?;
    Ok(dots.into_pyarray(py))
}

/// Returns the kernel sets this CPU runs, as `kernel_dot` names them: "scalar", then "avx2"
/// where the CPU has AVX2 and F16C.
#[pyfunction]
fn kernel_sets() -> Vec<&'static str> {
    probe::available_kernel_sets()
}

/// Adds the functions of this file to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(kernel_dot, m)?)?;
    m.add_function(wrap_pyfunction!(kernel_sets, m)?)?;
    Ok(())
}

