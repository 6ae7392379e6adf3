// Package controllers holds ImageGuard's reconcilers, one per file: pods to reports, reports to
// findings, policies to verdicts.
package controllers
