// Logging and results of the capi test app (atlas-deploy): what the tests read is on stdout.
#ifndef CAPI_APP_COMMON_H_
#define CAPI_APP_COMMON_H_

#include <cstdio>

#define INFO_LOG(fmt, ...) fprintf(stdout, "[INFO]  " fmt "\n", ##__VA_ARGS__)
#define ERROR_LOG(fmt, ...) fprintf(stderr, "[ERROR] " fmt "\n", ##__VA_ARGS__)

enum Result { SUCCESS = 0, FAILED = 1 };

#endif  // CAPI_APP_COMMON_H_
