/* broker_fixture.h - the per-test broker fixture shared by test_broker_*.c:
 * a fresh harness in the global H for every test case (and the allocation
 * checks of test_util.h around it). Include once, after test_util.h and
 * broker_harness.h. */
#ifndef BROKER_FIXTURE_H
#define BROKER_FIXTURE_H

static bh *H;

static int bh_fixture_setup(void **state)
{
    tu_setup(state);
    H = bh_new(NULL);
    return 0;
}

static int bh_fixture_teardown(void **state)
{
    bh_free(H);
    H = NULL;
    return tu_teardown(state);
}

#define TB(fn) cmocka_unit_test_setup_teardown(fn, bh_fixture_setup, bh_fixture_teardown)

#endif
