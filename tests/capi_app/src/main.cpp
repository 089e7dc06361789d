// The capi test app (atlas-deploy tests): run from out/ as the Ascend samples are.
//   ./main [executions [callback interval [model [data folder]]]]
//                                             classify ../data/*.bin with ../model/classify.om, sync then async
//   ./main errors                             the error cases, one "check <name> <code>" line each
//   ./main faults                             injected faults (ACL_SIM_FAIL, set by the test)
//   ./main touch                              read device memory directly (fine on a DK, a crash on a host)
#include <cstdlib>
#include <cstring>

#include "classifier.h"

namespace {

const char *kConfig = "../src/acl.json";
const char *kModel = "../model/classify.om";

int Touch() {
    if (aclInit(kConfig) != ACL_SUCCESS || aclrtSetDevice(0) != ACL_SUCCESS) return FAILED;
    void *device = nullptr;
    if (aclrtMalloc(&device, 64, ACL_MEM_MALLOC_NORMAL_ONLY) != ACL_SUCCESS) return FAILED;
    fprintf(stdout, "touching %p\n", device);
    fflush(stdout);
    volatile unsigned char *bytes = static_cast<unsigned char *>(device);
    bytes[0] = 7;
    fprintf(stdout, "touched %d\n", bytes[0]);
    (void)aclrtFree(device);
    (void)aclrtResetDevice(0);
    (void)aclFinalize();
    return SUCCESS;
}

}  // namespace

int main(int argc, char *argv[]) {
    if (argc > 1 && strcmp(argv[1], "errors") == 0) return RunChecks(kModel);
    if (argc > 1 && strcmp(argv[1], "faults") == 0) return RunFaults(kModel);
    if (argc > 1 && strcmp(argv[1], "touch") == 0) return Touch();
    size_t executions = argc > 1 ? static_cast<size_t>(atoi(argv[1])) : 8;
    size_t interval = argc > 2 ? static_cast<size_t>(atoi(argv[2])) : 3;
    const char *model = argc > 3 ? argv[3] : kModel;
    const char *data = argc > 4 ? argv[4] : "../data";
    INFO_LOG("executions = %zu, callback interval = %zu, model %s", executions, interval, model);
    Result result = FAILED;
    {
        Classifier classifier;
        if (classifier.Init(kConfig, model) == SUCCESS && classifier.LoadImages(data) == SUCCESS &&
            classifier.RunSync() == SUCCESS && classifier.RunAsync(executions, interval) == SUCCESS) {
            result = SUCCESS;
        }
    }
    INFO_LOG("%s", result == SUCCESS ? "classify success" : "classify failed");
    return result;
}
