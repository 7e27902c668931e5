// OpenBLAS: cblas for the matrix products, and the LAPACK routines Cairn calls (from the same library).
#pragma once
#include <cblas.h>

// LAPACK (Fortran calling convention; OpenBLAS ships them). Declared here so no lapacke package is needed.
void sgesdd_(const char *jobz, const int *m, const int *n, float *a, const int *lda, float *s, float *u,
             const int *ldu, float *vt, const int *ldvt, float *work, const int *lwork, int *iwork, int *info);
void sgeqrf_(const int *m, const int *n, float *a, const int *lda, float *tau, float *work, const int *lwork,
             int *info);
void sorgqr_(const int *m, const int *n, const int *k, float *a, const int *lda, const float *tau, float *work,
             const int *lwork, int *info);
