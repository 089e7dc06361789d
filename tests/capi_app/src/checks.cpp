// Error cases of the capi test app (atlas-deploy tests): each prints "check <name> <code>", the test
// compares the codes with the documented ones. `./main faults` runs under ACL_SIM_FAIL (set by the test).
#include <atomic>
#include <cstring>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "classifier.h"

namespace {

void Check(const char *name, aclError code) { fprintf(stdout, "check %s %d\n", name, static_cast<int32_t>(code)); }

std::thread::id g_ranOn;
void Remember(void *) { g_ranOn = std::this_thread::get_id(); }

aclmdlDataset *Dataset(void *buffer, size_t size) {
    aclmdlDataset *dataset = aclmdlCreateDataset();
    if (buffer != nullptr) (void)aclmdlAddDatasetBuffer(dataset, aclCreateDataBuffer(buffer, size));
    return dataset;
}

void MemoryChecks(aclrtContext context) {
    void *dev = nullptr;
    char host[64];
    memset(host, 1, sizeof(host));
    Check("malloc", aclrtMalloc(&dev, 64, ACL_MEM_MALLOC_NORMAL_ONLY));
    Check("malloc_zero", aclrtMalloc(&dev, 0, ACL_MEM_MALLOC_NORMAL_ONLY));
    Check("memcpy_count_over_destmax", aclrtMemcpy(dev, 32, host, 64, ACL_MEMCPY_HOST_TO_DEVICE));
    Check("memcpy_past_allocation", aclrtMemcpy(static_cast<char *>(dev) + 32, 64, host, 64, ACL_MEMCPY_HOST_TO_DEVICE));
    Check("memcpy_bad_kind", aclrtMemcpy(dev, 64, host, 64, static_cast<aclrtMemcpyKind>(9)));
    char back[64];
    memset(back, 9, sizeof(back));
    Check("memcpy_back", aclrtMemcpy(back, 64, dev, 64, ACL_MEMCPY_DEVICE_TO_HOST));
    Check("nothing_copied", back[0] == 0 && back[63] == 0 ? 0 : 1);  // still aclrtMalloc's zeros
    Check("free_not_device", aclrtFree(host));
    Check("free", aclrtFree(dev));
    Check("free_twice", aclrtFree(dev));
    aclError inThread = 0, afterSet = 0;
    std::thread other([&] {
        void *p = nullptr;
        inThread = aclrtMalloc(&p, 16, ACL_MEM_MALLOC_NORMAL_ONLY);
        afterSet = aclrtSetCurrentContext(context);
        if (afterSet == ACL_SUCCESS) afterSet = aclrtMalloc(&p, 16, ACL_MEM_MALLOC_NORMAL_ONLY);
        if (afterSet == ACL_SUCCESS) (void)aclrtFree(p);
    });
    other.join();
    Check("other_thread_no_context", inThread);
    Check("other_thread_after_set_context", afterSet);
}

void ModelChecks(const char *modelPath) {
    uint32_t id = 0;
    Check("load_missing_file", aclmdlLoadFromFile("../model/missing.om", &id));
    char junk[256];
    memset(junk, 'x', sizeof(junk));
    Check("load_not_a_model", aclmdlLoadFromMem(junk, sizeof(junk), &id));
    Check("load", aclmdlLoadFromFile(modelPath, &id));
    aclmdlDesc *desc = aclmdlCreateDesc();
    Check("get_desc", aclmdlGetDesc(desc, id));
    size_t inSize = aclmdlGetInputSizeByIndex(desc, 0), outSize = aclmdlGetOutputSizeByIndex(desc, 0);
    void *in = nullptr, *out = nullptr, *small = nullptr;
    (void)aclrtMalloc(&in, inSize, ACL_MEM_MALLOC_NORMAL_ONLY);
    (void)aclrtMalloc(&out, outSize, ACL_MEM_MALLOC_NORMAL_ONLY);
    (void)aclrtMalloc(&small, 16, ACL_MEM_MALLOC_NORMAL_ONLY);
    std::vector<char> hostInput(inSize);
    aclmdlDataset *input = Dataset(in, inSize), *output = Dataset(out, outSize);
    aclmdlDataset *tooSmall = Dataset(small, 16), *notDevice = Dataset(hostInput.data(), inSize), *empty = Dataset(nullptr, 0);
    Check("execute_bad_model_id", aclmdlExecute(9999, input, output));
    Check("execute_input_too_small", aclmdlExecute(id, tooSmall, output));
    Check("execute_input_not_device_memory", aclmdlExecute(id, notDevice, output));
    Check("execute_no_outputs", aclmdlExecute(id, input, empty));
    Check("execute", aclmdlExecute(id, input, output));
    aclmdlIODims dims;
    Check("input_dims_bad_index", aclmdlGetInputDims(desc, 5, &dims));
    Check("unload", aclmdlUnload(id));
    Check("unload_twice", aclmdlUnload(id));
    Check("desc_after_unload", aclmdlGetNumInputs(desc) == 1 ? 0 : 1);
    (void)aclmdlDestroyDesc(desc);
}

void StreamChecks(aclrtContext context) {
    aclrtStream stream = nullptr;
    Check("create_stream", aclrtCreateStream(&stream));
    Check("launch_callback_unsubscribed", aclrtLaunchCallback(Remember, nullptr, ACL_CALLBACK_BLOCK, stream));
    Check("process_report_unsubscribed", aclrtProcessReport(10));
    std::atomic<bool> stop(false);
    std::thread reporter([&] {
        aclrtSetCurrentContext(context);
        while (!stop) (void)aclrtProcessReport(20);
    });
    std::ostringstream text;
    text << reporter.get_id();
    uint64_t tid = std::stoull(text.str());
    Check("subscribe", aclrtSubscribeReport(tid, stream));
    Check("subscribe_twice", aclrtSubscribeReport(tid, stream));
    Check("launch_callback_no_block", aclrtLaunchCallback(Remember, nullptr, ACL_CALLBACK_NO_BLOCK, stream));
    Check("launch_callback", aclrtLaunchCallback(Remember, nullptr, ACL_CALLBACK_BLOCK, stream));
    Check("process_report_other_thread", aclrtProcessReport(50));  // main is not the subscribed thread
    Check("synchronize", aclrtSynchronizeStream(stream));
    Check("callback_ran_on_report_thread", g_ranOn == reporter.get_id() ? 0 : 1);
    stop = true;
    reporter.join();
    Check("unsubscribe", aclrtUnSubscribeReport(tid, stream));
    Check("unsubscribe_twice", aclrtUnSubscribeReport(tid, stream));
    Check("destroy_stream", aclrtDestroyStream(stream));
}

}  // namespace

int RunChecks(const char *modelPath) {
    void *p = nullptr;
    aclrtRunMode mode;
    Check("malloc_before_init", aclrtMalloc(&p, 16, ACL_MEM_MALLOC_NORMAL_ONLY));
    Check("run_mode_before_init", aclrtGetRunMode(&mode));
    Check("init_bad_config", aclInit("../model/missing.json"));
    Check("init", aclInit("../src/acl.json"));
    Check("init_twice", aclInit("../src/acl.json"));
    Check("malloc_no_context", aclrtMalloc(&p, 16, ACL_MEM_MALLOC_NORMAL_ONLY));
    Check("err_msg_set", aclGetRecentErrMsg() != nullptr ? 0 : 1);
    Check("err_msg_cleared", aclGetRecentErrMsg() == nullptr ? 0 : 1);
    Check("set_device_bad", aclrtSetDevice(7));
    Check("set_device", aclrtSetDevice(0));
    aclrtContext context = nullptr;
    Check("create_context", aclrtCreateContext(&context, 0));
    MemoryChecks(context);
    ModelChecks(modelPath);
    StreamChecks(context);
    Check("destroy_context", aclrtDestroyContext(context));
    Check("destroy_context_twice", aclrtDestroyContext(context));
    Check("reset_device", aclrtResetDevice(0));
    Check("finalize", aclFinalize());
    Check("finalize_twice", aclFinalize());
    Check("malloc_after_finalize", aclrtMalloc(&p, 16, ACL_MEM_MALLOC_NORMAL_ONLY));
    Check("init_after_finalize", aclInit(nullptr));
    return SUCCESS;
}

// Under ACL_SIM_FAIL="malloc:2,memcpy:1,execute:1,launch_callback:1": each faulted call returns its code
// and does nothing; the next call of the same function works.
int RunFaults(const char *modelPath) {
    aclrtContext context = nullptr;
    if (aclInit(nullptr) != ACL_SUCCESS || aclrtSetDevice(0) != ACL_SUCCESS || aclrtCreateContext(&context, 0) != ACL_SUCCESS)
        return FAILED;
    void *a = nullptr, *b = nullptr;
    char ones[64], back[64];
    memset(ones, 1, sizeof(ones));
    Check("malloc_1", aclrtMalloc(&a, 64, ACL_MEM_MALLOC_NORMAL_ONLY));
    Check("malloc_2", aclrtMalloc(&b, 64, ACL_MEM_MALLOC_NORMAL_ONLY));
    Check("malloc_2_gave_no_pointer", b == nullptr ? 0 : 1);
    Check("memcpy_1", aclrtMemcpy(a, 64, ones, 64, ACL_MEMCPY_HOST_TO_DEVICE));
    Check("memcpy_2", aclrtMemcpy(back, 64, a, 64, ACL_MEMCPY_DEVICE_TO_HOST));
    Check("memcpy_1_copied_nothing", back[0] == 0 ? 0 : 1);
    uint32_t id = 0;
    Check("load", aclmdlLoadFromFile(modelPath, &id));
    aclmdlDesc *desc = aclmdlCreateDesc();
    (void)aclmdlGetDesc(desc, id);
    size_t inSize = aclmdlGetInputSizeByIndex(desc, 0), outSize = aclmdlGetOutputSizeByIndex(desc, 0);
    void *in = nullptr, *out = nullptr;
    (void)aclrtMalloc(&in, inSize, ACL_MEM_MALLOC_NORMAL_ONLY);
    (void)aclrtMalloc(&out, outSize, ACL_MEM_MALLOC_NORMAL_ONLY);
    (void)aclrtMemset(out, outSize, 0x5A, outSize);
    aclmdlDataset *input = Dataset(in, inSize), *output = Dataset(out, outSize);
    unsigned char first = 0;
    Check("execute_1", aclmdlExecute(id, input, output));
    (void)aclrtMemcpy(&first, 1, out, 1, ACL_MEMCPY_DEVICE_TO_HOST);
    Check("execute_1_wrote_nothing", first == 0x5A ? 0 : 1);
    Check("execute_2", aclmdlExecute(id, input, output));
    (void)aclrtMemcpy(&first, 1, out, 1, ACL_MEMCPY_DEVICE_TO_HOST);
    Check("execute_2_wrote", first != 0x5A ? 0 : 1);
    aclrtStream stream = nullptr;
    (void)aclrtCreateStream(&stream);
    std::atomic<bool> stop(false);
    std::thread reporter([&] {
        aclrtSetCurrentContext(context);
        while (!stop) (void)aclrtProcessReport(20);
    });
    std::ostringstream text;
    text << reporter.get_id();
    uint64_t tid = std::stoull(text.str());
    (void)aclrtSubscribeReport(tid, stream);
    Check("launch_callback_1", aclrtLaunchCallback(Remember, nullptr, ACL_CALLBACK_BLOCK, stream));
    Check("synchronize_1", aclrtSynchronizeStream(stream));
    Check("launch_callback_1_ran_nothing", g_ranOn == std::thread::id() ? 0 : 1);
    Check("launch_callback_2", aclrtLaunchCallback(Remember, nullptr, ACL_CALLBACK_BLOCK, stream));
    Check("synchronize_2", aclrtSynchronizeStream(stream));
    Check("launch_callback_2_ran", g_ranOn == reporter.get_id() ? 0 : 1);
    stop = true;
    reporter.join();
    (void)aclrtUnSubscribeReport(tid, stream);
    (void)aclrtDestroyStream(stream);
    (void)aclmdlUnload(id);
    (void)aclmdlDestroyDesc(desc);
    (void)aclrtDestroyContext(context);
    (void)aclrtResetDevice(0);
    (void)aclFinalize();
    return SUCCESS;
}
