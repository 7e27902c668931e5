// libzmq (Debian: libzmq3-dev). Cairn's Transport module wraps it; nothing else imports it.
#pragma once
#include <zmq.h>
