// Reads every file of the folder given as argv[1] (or ../data), writes one line per file into
// ../results/sizes.txt (next to the program's out/ folder, as the samples write next to their code),
// prints [n/N] counters, and says which machine it runs on. Uses threads and the C++ standard library.
#include <sys/utsname.h>
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

int main(int argc, char **argv) {
    std::string dir = argc > 1 ? argv[1] : "../data";
    std::vector<std::string> names;
    if (DIR *d = opendir(dir.c_str())) {
        while (dirent *e = readdir(d)) {
            if (e->d_name[0] != '.') names.push_back(e->d_name);
        }
        closedir(d);
    } else {
        std::cerr << "cannot open " << dir << std::endl;
        return 2;
    }
    std::sort(names.begin(), names.end());
    std::vector<long> sizes(names.size());
    std::vector<std::thread> workers;
    for (size_t i = 0; i < names.size(); ++i) {
        workers.emplace_back([&, i] {
            struct stat st;
            sizes[i] = stat((dir + "/" + names[i]).c_str(), &st) == 0 ? st.st_size : -1;
        });
    }
    for (auto &w : workers) w.join();
    mkdir("../results", 0755);
    std::ofstream out("../results/sizes.txt");
    for (size_t i = 0; i < names.size(); ++i) {
        out << names[i] << " " << sizes[i] << "\n";
        std::cout << "[" << i + 1 << "/" << names.size() << "] " << names[i] << " " << sizes[i] << " bytes" << std::endl;
    }
    struct utsname u;
    uname(&u);
    std::cerr << "machine " << u.machine << std::endl;
    return 0;
}
