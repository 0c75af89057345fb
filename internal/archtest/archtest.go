// Package archtest holds the architecture tests of the repository (STYLE.md
// 12): the dependency rules of DESIGN.md §3 and the rule that every package
// says what it is for in a doc comment. It has no non-test code of use to
// other packages.
package archtest
