// The capi test app's classifier (atlas-deploy tests), written from the documented AscendCL API.
#include "classifier.h"

#include <dirent.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

namespace {

std::atomic<bool> g_stop(false);

void ReportLoop(aclrtContext context) {
    // callbacks of the subscribed stream run inside aclrtProcessReport, on this thread only
    aclrtSetCurrentContext(context);
    while (!g_stop.load()) {
        (void)aclrtProcessReport(100);
    }
}

uint64_t ThreadNumber(const std::thread &t) {
    std::ostringstream text;
    text << t.get_id();
    return std::stoull(text.str());
}

}  // namespace

Result Classifier::Init(const char *configPath, const char *modelPath) {
    aclError ret = aclInit(configPath);
    if (ret != ACL_SUCCESS) {
        ERROR_LOG("aclInit failed, errorCode = %d", static_cast<int32_t>(ret));
        return FAILED;
    }
    initialised_ = true;
    if ((ret = aclrtSetDevice(0)) != ACL_SUCCESS) {
        ERROR_LOG("aclrtSetDevice failed, errorCode = %d", static_cast<int32_t>(ret));
        return FAILED;
    }
    deviceSet_ = true;
    if ((ret = aclrtCreateContext(&context, 0)) != ACL_SUCCESS || (ret = aclrtCreateStream(&stream)) != ACL_SUCCESS) {
        ERROR_LOG("context/stream failed, errorCode = %d", static_cast<int32_t>(ret));
        return FAILED;
    }
    aclrtRunMode mode;
    if (aclrtGetRunMode(&mode) != ACL_SUCCESS) return FAILED;
    onDevice = (mode == ACL_DEVICE);
    INFO_LOG("run mode %s", onDevice ? "ACL_DEVICE" : "ACL_HOST");

    size_t workSize = 0, weightSize = 0;
    if ((ret = aclmdlQuerySize(modelPath, &workSize, &weightSize)) != ACL_SUCCESS) {
        ERROR_LOG("aclmdlQuerySize %s failed, errorCode = %d: %s", modelPath, static_cast<int32_t>(ret), aclGetRecentErrMsg());
        return FAILED;
    }
    if (aclrtMalloc(&work_, workSize, ACL_MEM_MALLOC_HUGE_FIRST) != ACL_SUCCESS ||
        aclrtMalloc(&weight_, weightSize, ACL_MEM_MALLOC_HUGE_FIRST) != ACL_SUCCESS) {
        ERROR_LOG("model memory (%zu + %zu bytes) failed", workSize, weightSize);
        return FAILED;
    }
    ret = aclmdlLoadFromFileWithMem(modelPath, &modelId_, work_, workSize, weight_, weightSize);
    if (ret != ACL_SUCCESS) {
        ERROR_LOG("load %s failed, errorCode = %d: %s", modelPath, static_cast<int32_t>(ret), aclGetRecentErrMsg());
        return FAILED;
    }
    loaded_ = true;
    desc_ = aclmdlCreateDesc();
    if (desc_ == nullptr || aclmdlGetDesc(desc_, modelId_) != ACL_SUCCESS) return FAILED;
    aclmdlIODims dims;
    if (aclmdlGetInputDims(desc_, 0, &dims) != ACL_SUCCESS) return FAILED;
    INFO_LOG("model %u: %zu input(s), %zu output(s), input %s of %zu dims, %zu bytes", modelId_, aclmdlGetNumInputs(desc_),
             aclmdlGetNumOutputs(desc_), dims.name, dims.dimCount, aclmdlGetInputSizeByIndex(desc_, 0));
    return SUCCESS;
}

// The file in device memory: read straight into it on the board (ACL_DEVICE), through a host buffer
// and aclrtMemcpy elsewhere.
Result Classifier::ReadInto(const std::string &path, void *&devBuffer, size_t &size) {
    std::ifstream file(path, std::ifstream::binary);
    if (!file) return FAILED;
    file.seekg(0, file.end);
    size = static_cast<size_t>(file.tellg());
    file.seekg(0, file.beg);
    if (aclrtMalloc(&devBuffer, size, ACL_MEM_MALLOC_NORMAL_ONLY) != ACL_SUCCESS) return FAILED;
    if (onDevice) {
        file.read(static_cast<char *>(devBuffer), size);
        return SUCCESS;
    }
    void *host = nullptr;
    if (aclrtMallocHost(&host, size) != ACL_SUCCESS) return FAILED;
    file.read(static_cast<char *>(host), size);
    aclError ret = aclrtMemcpy(devBuffer, size, host, size, ACL_MEMCPY_HOST_TO_DEVICE);
    (void)aclrtFreeHost(host);
    return ret == ACL_SUCCESS ? SUCCESS : FAILED;
}

aclmdlDataset *Classifier::MakeDataset(void *buffer, size_t size) {
    aclmdlDataset *dataset = aclmdlCreateDataset();
    aclDataBuffer *data = aclCreateDataBuffer(buffer, size);
    if (dataset == nullptr || data == nullptr || aclmdlAddDatasetBuffer(dataset, data) != ACL_SUCCESS) {
        ERROR_LOG("dataset of %zu bytes failed", size);
        return nullptr;
    }
    return dataset;
}

aclmdlDataset *Classifier::MakeOutput() {
    aclmdlDataset *dataset = aclmdlCreateDataset();
    for (size_t i = 0; dataset != nullptr && i < aclmdlGetNumOutputs(desc_); ++i) {
        size_t size = aclmdlGetOutputSizeByIndex(desc_, i);
        void *buffer = nullptr;
        if (aclrtMalloc(&buffer, size, ACL_MEM_MALLOC_NORMAL_ONLY) != ACL_SUCCESS) return nullptr;
        aclDataBuffer *data = aclCreateDataBuffer(buffer, size);
        if (data == nullptr || aclmdlAddDatasetBuffer(dataset, data) != ACL_SUCCESS) return nullptr;
    }
    return dataset;
}

Result Classifier::LoadImages(const std::string &dataDir) {
    DIR *dir = opendir(dataDir.c_str());
    if (dir == nullptr) return FAILED;
    for (struct dirent *entry = readdir(dir); entry != nullptr; entry = readdir(dir)) {
        std::string name = entry->d_name;
        if (name.size() > 4 && name.substr(name.size() - 4) == ".bin") files_.push_back(name);
    }
    closedir(dir);
    std::sort(files_.begin(), files_.end());
    for (const std::string &name : files_) {
        void *buffer = nullptr;
        size_t size = 0;
        if (ReadInto(dataDir + "/" + name, buffer, size) != SUCCESS) return FAILED;
        if (size != aclmdlGetInputSizeByIndex(desc_, 0)) {
            ERROR_LOG("%s is %zu bytes, the model wants %zu", name.c_str(), size, aclmdlGetInputSizeByIndex(desc_, 0));
            return FAILED;
        }
        aclmdlDataset *input = MakeDataset(buffer, size);
        if (input == nullptr) return FAILED;
        inputs_.push_back(input);
    }
    INFO_LOG("%zu image(s) from %s", files_.size(), dataDir.c_str());
    return files_.empty() ? FAILED : SUCCESS;
}

void Classifier::Report(const char *mode, size_t execution, aclmdlDataset *output) {
    aclDataBuffer *data = aclmdlGetDatasetBuffer(output, 0);
    size_t size = aclGetDataBufferSizeV2(data);
    const float *scores = static_cast<const float *>(aclGetDataBufferAddr(data));
    void *host = nullptr;
    if (!onDevice) {  // device memory is not addressable from a host: copy it first
        if (aclrtMallocHost(&host, size) != ACL_SUCCESS ||
            aclrtMemcpy(host, size, aclGetDataBufferAddr(data), size, ACL_MEMCPY_DEVICE_TO_HOST) != ACL_SUCCESS) {
            ERROR_LOG("output copy failed");
            return;
        }
        scores = static_cast<const float *>(host);
    }
    size_t best = 0;
    for (size_t i = 1; i < size / sizeof(float); ++i) {
        if (scores[i] > scores[best]) best = i;
    }
    fprintf(stdout, "%s %zu %s top1 %zu %f\n", mode, execution, files_[execution % files_.size()].c_str(), best,
            static_cast<double>(scores[best]));
    if (host != nullptr) (void)aclrtFreeHost(host);
}

Result Classifier::RunSync() {
    aclmdlDataset *output = MakeOutput();
    if (output == nullptr) return FAILED;
    for (size_t i = 0; i < inputs_.size(); ++i) {
        aclError ret = aclmdlExecute(modelId_, inputs_[i], output);
        if (ret != ACL_SUCCESS) {
            ERROR_LOG("aclmdlExecute failed, errorCode = %d: %s", static_cast<int32_t>(ret), aclGetRecentErrMsg());
            FreeDataset(output, true);
            return FAILED;
        }
        Report("sync", i, output);
    }
    FreeDataset(output, true);
    return SUCCESS;
}

void Classifier::OnCallback(void *userData) {
    Pending *pending = static_cast<Pending *>(userData);
    for (size_t execution : pending->executions) {
        pending->self->Report("async", execution, pending->self->outputs_[execution]);
    }
    delete pending;
}

Result Classifier::RunAsync(size_t executions, size_t interval) {
    g_stop = false;
    std::thread reporter(ReportLoop, context);
    uint64_t tid = ThreadNumber(reporter);
    Result result = SUCCESS;
    if (aclrtSubscribeReport(tid, stream) != ACL_SUCCESS) result = FAILED;
    Pending *pending = new Pending{this, {}};
    for (size_t i = 0; result == SUCCESS && i < executions; ++i) {
        outputs_.push_back(MakeOutput());
        aclError ret = aclmdlExecuteAsync(modelId_, inputs_[i % inputs_.size()], outputs_[i], stream);
        pending->executions.push_back(i);
        if (ret == ACL_SUCCESS && interval != 0 && (i + 1) % interval == 0) {
            ret = aclrtLaunchCallback(OnCallback, pending, ACL_CALLBACK_BLOCK, stream);
            pending = new Pending{this, {}};
        }
        if (ret != ACL_SUCCESS) {
            ERROR_LOG("async step %zu failed, errorCode = %d: %s", i, static_cast<int32_t>(ret), aclGetRecentErrMsg());
            result = FAILED;
        }
    }
    aclError ret = aclrtSynchronizeStream(stream);
    if (ret != ACL_SUCCESS) {
        ERROR_LOG("aclrtSynchronizeStream failed, errorCode = %d: %s", static_cast<int32_t>(ret), aclGetRecentErrMsg());
        result = FAILED;
    }
    for (size_t execution : pending->executions) Report("async", execution, outputs_[execution]);  // no callback after them
    delete pending;
    g_stop = true;
    reporter.join();
    if (aclrtUnSubscribeReport(tid, stream) != ACL_SUCCESS) result = FAILED;
    return result;
}

void Classifier::FreeDataset(aclmdlDataset *&dataset, bool freeMemory) {
    if (dataset == nullptr) return;
    for (size_t i = 0; i < aclmdlGetDatasetNumBuffers(dataset); ++i) {
        aclDataBuffer *data = aclmdlGetDatasetBuffer(dataset, i);
        if (freeMemory) (void)aclrtFree(aclGetDataBufferAddr(data));
        (void)aclDestroyDataBuffer(data);
    }
    (void)aclmdlDestroyDataset(dataset);
    dataset = nullptr;
}

Classifier::~Classifier() {
    for (aclmdlDataset *&d : inputs_) FreeDataset(d, true);
    for (aclmdlDataset *&d : outputs_) FreeDataset(d, true);
    if (loaded_ && aclmdlUnload(modelId_) != ACL_SUCCESS) ERROR_LOG("aclmdlUnload failed");
    if (desc_ != nullptr) (void)aclmdlDestroyDesc(desc_);
    if (work_ != nullptr) (void)aclrtFree(work_);
    if (weight_ != nullptr) (void)aclrtFree(weight_);
    if (stream != nullptr && aclrtDestroyStream(stream) != ACL_SUCCESS) ERROR_LOG("aclrtDestroyStream failed");
    if (context != nullptr && aclrtDestroyContext(context) != ACL_SUCCESS) ERROR_LOG("aclrtDestroyContext failed");
    if (deviceSet_ && aclrtResetDevice(0) != ACL_SUCCESS) ERROR_LOG("aclrtResetDevice failed");
    if (initialised_ && aclFinalize() != ACL_SUCCESS) ERROR_LOG("aclFinalize failed");
    INFO_LOG("resources released");
}
