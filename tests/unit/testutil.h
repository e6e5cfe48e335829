/* Shared includes and helpers for the cmocka unit tests. */
#ifndef MDHUNT_TESTUTIL_H
#define MDHUNT_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

/* Directory of checked-in test data, relative to the project root where
 * `make check` runs the tests. */
#ifndef MD_TEST_DATA
#define MD_TEST_DATA "tests/data"
#endif

#endif
