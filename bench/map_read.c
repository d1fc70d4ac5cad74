/* How reading checkpoints costs, without averaging: sums every u16 of the files.
 *   gcc -O2 -march=native -o map_read bench/map_read.c
 *   /usr/bin/time -f "%U %S %e minflt=%R" ./map_read MODE FILE...
 * MODE 0: mmap; 1: mmap at a 2 MiB-aligned address; 2: as 1 plus MADV_HUGEPAGE;
 * 3: mmap plus MADV_POPULATE_READ; 4: pread into a 1 MiB buffer.
 * Prints the last mapping's FilePmdMapped (page-cache folios mapped with 2 MiB entries). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/stat.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static void pmd(){FILE*f=fopen("/proc/self/smaps_rollup","r");char l[256];while(fgets(l,256,f))if(strstr(l,"FilePmdMapped")||strstr(l,"Rss:"))fputs(l,stdout);fclose(f);}
int main(int argc,char**argv){
  int mode=atoi(argv[1]); // 0 plain, 1 aligned, 2 aligned+MADV_HUGEPAGE, 3 plain+populate
  double t0=now(); uint64_t s=0; size_t total=0;
  for(int i=2;i<argc;i++){
    int fd=open(argv[i],O_RDONLY); struct stat st; fstat(fd,&st); size_t len=st.st_size;
    char*p;
    if(mode==4){ static uint16_t buf[1<<19]; uint64_t acc[8]={0}; size_t off=0; ssize_t r;
      while((r=pread(fd,buf,sizeof buf,off))>0){ for(size_t j=0;j+8<=(size_t)r/2;j+=8)for(int k=0;k<8;k++)acc[k]+=buf[j+k]; off+=r;}
      for(int k=0;k<8;k++)s+=acc[k];
      total+=len; close(fd); continue; }
    if(mode==0||mode==3){p=mmap(0,len,PROT_READ,MAP_PRIVATE,fd,0);}
    else{ size_t A=2<<20; char*r=mmap(0,len+A,PROT_NONE,MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE,-1,0);
      char*a=(char*)(((uintptr_t)r+A-1)&~(A-1));
      p=mmap(a,len,PROT_READ,MAP_PRIVATE|MAP_FIXED,fd,0);
      if(mode==2) madvise(p,len,MADV_HUGEPAGE);}
    if(mode==3) madvise(p,len,22/*MADV_POPULATE_READ*/);
    const uint16_t*u=(const uint16_t*)p; size_t n=len/2; uint64_t acc[8]={0};
    for(size_t j=0;j+8<=n;j+=8){for(int k=0;k<8;k++)acc[k]+=u[j+k];}
    for(int k=0;k<8;k++)s+=acc[k];
    total+=len;
    if(i==argc-1)pmd();
  }
  double t=now()-t0; printf("mode %d: %.3f s %.2f GB/s (sum %lu)\n",mode,t,total/t/1e9,(unsigned long)s);
}
