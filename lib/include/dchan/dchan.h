// dchan/dchan.h — everything lib offers, in one include: Go's channels,
// select, sync toolbox and `go` statement for C++.
//
//   #include <dchan/dchan.h>
//
// See each header for its contract: chan.h (Chan, make_chan), select.h
// (select, on_recv, on_send, on_default, after), wait_group.h, mutex.h,
// rw_mutex.h, atomic_value.h, go.h, group.h, codec.h (how values travel to a
// broker) and error.h (dchan::Error). Broker-backed objects come from
// <dchan/client.h> (the dchan::client library) and are the same types.
#ifndef DCHAN_DCHAN_H_
#define DCHAN_DCHAN_H_

#include "dchan/atomic_value.h"
#include "dchan/chan.h"
#include "dchan/codec.h"
#include "dchan/error.h"
#include "dchan/go.h"
#include "dchan/group.h"
#include "dchan/mutex.h"
#include "dchan/rw_mutex.h"
#include "dchan/select.h"
#include "dchan/wait_group.h"

#endif  // DCHAN_DCHAN_H_
