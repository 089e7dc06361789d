// The capi test app's classifier: one model, images read from ../data, answers printed as
//   <mode> <execution> <file> top1 <index> <value>
// once synchronously (aclmdlExecute) and once asynchronously (aclmdlExecuteAsync on a stream, a
// callback every `interval` executions run by a subscribed report thread).
#ifndef CAPI_APP_CLASSIFIER_H_
#define CAPI_APP_CLASSIFIER_H_

#include <string>
#include <vector>

#include "acl/acl.h"
#include "common.h"

class Classifier {
public:
    Classifier() {}
    ~Classifier();
    Result Init(const char *configPath, const char *modelPath);
    Result LoadImages(const std::string &dataDir);
    Result RunSync();
    Result RunAsync(size_t executions, size_t interval);

    aclrtContext context = nullptr;
    aclrtStream stream = nullptr;
    bool onDevice = true;

private:
    struct Pending {
        Classifier *self;
        std::vector<size_t> executions;
    };
    static void OnCallback(void *userData);
    Result ReadInto(const std::string &path, void *&devBuffer, size_t &size);
    aclmdlDataset *MakeDataset(void *buffer, size_t size);
    aclmdlDataset *MakeOutput();
    void Report(const char *mode, size_t execution, aclmdlDataset *output);
    void FreeDataset(aclmdlDataset *&dataset, bool freeMemory);

    uint32_t modelId_ = 0;
    bool loaded_ = false;
    void *work_ = nullptr, *weight_ = nullptr;
    aclmdlDesc *desc_ = nullptr;
    std::vector<std::string> files_;
    std::vector<aclmdlDataset *> inputs_;
    std::vector<aclmdlDataset *> outputs_;  // one per asynchronous execution
    bool initialised_ = false, deviceSet_ = false;
};

int RunChecks(const char *modelPath);  // error cases: prints "check <name> <code>" lines
int RunFaults(const char *modelPath);  // the same under ACL_SIM_FAIL

#endif  // CAPI_APP_CLASSIFIER_H_
