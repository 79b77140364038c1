"""Tests for p2g_dask.io.annotation (GFF3/GTF/tables -> genes, exons; chrom sizes) and genome sizes."""

from __future__ import annotations

import gzip
import logging
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import p2g_dask as p2g
from p2g_dask.io import _gff
from p2g_dask.io.annotation import read_chrom_sizes, read_gene_annotation


# GENCODE v41 basic, exactly as released, except that columns are shown separated by two spaces
# (turned back into tabs by `_tabs`) and a few exon coordinates are shortened.
# DDX11L1: + strand, two untagged transcripts (-> merged exons); WASH7P: - strand, one
# Ensembl_canonical transcript; NOC2L: - strand, MANE_Select with CDS/UTR/codon rows; ZMYND11 on
# chr10 listed before FAM110C on chr2; PLCXD1 on chrX and its PAR copy on chrY.
GENCODE_GFF3 = """\
##gff-version 3
#description: evidence-based annotation of the human genome (GRCh38), version 41 (Ensembl 107) - basic transcripts
#provider: GENCODE
#contact: gencode-help@ebi.ac.uk
#format: gff3
#date: 2022-05-12
##sequence-region chr1 1 248956422
chr1  HAVANA  gene  11869  14409  .  +  .  ID=ENSG00000223972.5;gene_id=ENSG00000223972.5;gene_type=transcribed_unprocessed_pseudogene;gene_name=DDX11L1;level=2;hgnc_id=HGNC:37102;havana_gene=OTTHUMG00000000961.2
chr1  HAVANA  transcript  11869  14409  .  +  .  ID=ENST00000456328.2;Parent=ENSG00000223972.5;gene_id=ENSG00000223972.5;transcript_id=ENST00000456328.2;gene_type=transcribed_unprocessed_pseudogene;gene_name=DDX11L1;transcript_type=processed_transcript;transcript_name=DDX11L1-202;level=2;transcript_support_level=1;hgnc_id=HGNC:37102;tag=basic;havana_gene=OTTHUMG00000000961.2;havana_transcript=OTTHUMT00000362751.1
chr1  HAVANA  exon  11869  12227  .  +  .  ID=exon:ENST00000456328.2:1;Parent=ENST00000456328.2;gene_id=ENSG00000223972.5;transcript_id=ENST00000456328.2;gene_type=transcribed_unprocessed_pseudogene;gene_name=DDX11L1;transcript_type=processed_transcript;transcript_name=DDX11L1-202;exon_number=1;exon_id=ENSE00002234944.1;level=2;transcript_support_level=1;hgnc_id=HGNC:37102;tag=basic;havana_gene=OTTHUMG00000000961.2;havana_transcript=OTTHUMT00000362751.1
chr1  HAVANA  exon  12613  12721  .  +  .  ID=exon:ENST00000456328.2:2;Parent=ENST00000456328.2;gene_id=ENSG00000223972.5;transcript_id=ENST00000456328.2;gene_type=transcribed_unprocessed_pseudogene;gene_name=DDX11L1;transcript_type=processed_transcript;transcript_name=DDX11L1-202;exon_number=2;exon_id=ENSE00003582793.1;level=2;transcript_support_level=1;hgnc_id=HGNC:37102;tag=basic;havana_gene=OTTHUMG00000000961.2;havana_transcript=OTTHUMT00000362751.1
chr1  HAVANA  exon  13221  14409  .  +  .  ID=exon:ENST00000456328.2:3;Parent=ENST00000456328.2;gene_id=ENSG00000223972.5;transcript_id=ENST00000456328.2;gene_type=transcribed_unprocessed_pseudogene;gene_name=DDX11L1;transcript_type=processed_transcript;transcript_name=DDX11L1-202;exon_number=3;exon_id=ENSE00002312635.1;level=2;transcript_support_level=1;hgnc_id=HGNC:37102;tag=basic;havana_gene=OTTHUMG00000000961.2;havana_transcript=OTTHUMT00000362751.1
chr1  HAVANA  transcript  12010  13670  .  +  .  ID=ENST00000450305.2;Parent=ENSG00000223972.5;gene_id=ENSG00000223972.5;transcript_id=ENST00000450305.2;gene_type=transcribed_unprocessed_pseudogene;gene_name=DDX11L1;transcript_type=transcribed_unprocessed_pseudogene;transcript_name=DDX11L1-201;level=2;transcript_support_level=NA;hgnc_id=HGNC:37102;ont=PGO:0000005,PGO:0000019;tag=basic;havana_gene=OTTHUMG00000000961.2;havana_transcript=OTTHUMT00000002844.2
chr1  HAVANA  exon  12010  12057  .  +  .  ID=exon:ENST00000450305.2:1;Parent=ENST00000450305.2;gene_id=ENSG00000223972.5;transcript_id=ENST00000450305.2;gene_type=transcribed_unprocessed_pseudogene;gene_name=DDX11L1;transcript_type=transcribed_unprocessed_pseudogene;transcript_name=DDX11L1-201;exon_number=1;exon_id=ENSE00001948541.1;level=2;transcript_support_level=NA;hgnc_id=HGNC:37102;ont=PGO:0000005,PGO:0000019;tag=basic;havana_gene=OTTHUMG00000000961.2;havana_transcript=OTTHUMT00000002844.2
chr1  HAVANA  exon  12179  12227  .  +  .  ID=exon:ENST00000450305.2:2;Parent=ENST00000450305.2;gene_id=ENSG00000223972.5;transcript_id=ENST00000450305.2;gene_type=transcribed_unprocessed_pseudogene;gene_name=DDX11L1;transcript_type=transcribed_unprocessed_pseudogene;transcript_name=DDX11L1-201;exon_number=2;exon_id=ENSE00001671638.2;level=2;transcript_support_level=NA;hgnc_id=HGNC:37102;ont=PGO:0000005,PGO:0000019;tag=basic;havana_gene=OTTHUMG00000000961.2;havana_transcript=OTTHUMT00000002844.2
chr1  HAVANA  exon  12975  13052  .  +  .  ID=exon:ENST00000450305.2:3;Parent=ENST00000450305.2;gene_id=ENSG00000223972.5;transcript_id=ENST00000450305.2;gene_type=transcribed_unprocessed_pseudogene;gene_name=DDX11L1;transcript_type=transcribed_unprocessed_pseudogene;transcript_name=DDX11L1-201;exon_number=3;exon_id=ENSE00001758273.2;level=2;transcript_support_level=NA;hgnc_id=HGNC:37102;ont=PGO:0000005,PGO:0000019;tag=basic;havana_gene=OTTHUMG00000000961.2;havana_transcript=OTTHUMT00000002844.2
###
chr1  HAVANA  gene  14404  29570  .  -  .  ID=ENSG00000227232.5;gene_id=ENSG00000227232.5;gene_type=unprocessed_pseudogene;gene_name=WASH7P;level=2;hgnc_id=HGNC:38034;havana_gene=OTTHUMG00000000958.1
chr1  HAVANA  transcript  14404  29570  .  -  .  ID=ENST00000488147.1;Parent=ENSG00000227232.5;gene_id=ENSG00000227232.5;transcript_id=ENST00000488147.1;gene_type=unprocessed_pseudogene;gene_name=WASH7P;transcript_type=unprocessed_pseudogene;transcript_name=WASH7P-201;level=2;transcript_support_level=NA;hgnc_id=HGNC:38034;ont=PGO:0000005;tag=basic,Ensembl_canonical;havana_gene=OTTHUMG00000000958.1;havana_transcript=OTTHUMT00000002839.1
chr1  HAVANA  exon  29534  29570  .  -  .  ID=exon:ENST00000488147.1:1;Parent=ENST00000488147.1;gene_id=ENSG00000227232.5;transcript_id=ENST00000488147.1;gene_type=unprocessed_pseudogene;gene_name=WASH7P;transcript_type=unprocessed_pseudogene;transcript_name=WASH7P-201;exon_number=1;exon_id=ENSE00001890219.1;level=2;transcript_support_level=NA;hgnc_id=HGNC:38034;ont=PGO:0000005;tag=basic,Ensembl_canonical;havana_gene=OTTHUMG00000000958.1;havana_transcript=OTTHUMT00000002839.1
chr1  HAVANA  exon  24738  24891  .  -  .  ID=exon:ENST00000488147.1:2;Parent=ENST00000488147.1;gene_id=ENSG00000227232.5;transcript_id=ENST00000488147.1;gene_type=unprocessed_pseudogene;gene_name=WASH7P;transcript_type=unprocessed_pseudogene;transcript_name=WASH7P-201;exon_number=2;exon_id=ENSE00003507205.1;level=2;transcript_support_level=NA;hgnc_id=HGNC:38034;ont=PGO:0000005;tag=basic,Ensembl_canonical;havana_gene=OTTHUMG00000000958.1;havana_transcript=OTTHUMT00000002839.1
chr1  HAVANA  exon  14404  14501  .  -  .  ID=exon:ENST00000488147.1:3;Parent=ENST00000488147.1;gene_id=ENSG00000227232.5;transcript_id=ENST00000488147.1;gene_type=unprocessed_pseudogene;gene_name=WASH7P;transcript_type=unprocessed_pseudogene;transcript_name=WASH7P-201;exon_number=3;exon_id=ENSE00001843071.1;level=2;transcript_support_level=NA;hgnc_id=HGNC:38034;ont=PGO:0000005;tag=basic,Ensembl_canonical;havana_gene=OTTHUMG00000000958.1;havana_transcript=OTTHUMT00000002839.1
chr1  HAVANA  transcript  14404  29570  .  -  .  ID=ENST00000494149.2;Parent=ENSG00000227232.5;gene_id=ENSG00000227232.5;transcript_id=ENST00000494149.2;gene_type=unprocessed_pseudogene;gene_name=WASH7P;transcript_type=processed_transcript;transcript_name=WASH7P-202;level=2;transcript_support_level=NA;hgnc_id=HGNC:38034;tag=basic;havana_gene=OTTHUMG00000000958.1;havana_transcript=OTTHUMT00000002840.2
chr1  HAVANA  exon  29000  29570  .  -  .  ID=exon:ENST00000494149.2:1;Parent=ENST00000494149.2;gene_id=ENSG00000227232.5;transcript_id=ENST00000494149.2;gene_type=unprocessed_pseudogene;gene_name=WASH7P;transcript_type=processed_transcript;transcript_name=WASH7P-202;exon_number=1;exon_id=ENSE00001960020.1;level=2;transcript_support_level=NA;hgnc_id=HGNC:38034;tag=basic;havana_gene=OTTHUMG00000000958.1;havana_transcript=OTTHUMT00000002840.2
chr1  HAVANA  exon  14404  15000  .  -  .  ID=exon:ENST00000494149.2:2;Parent=ENST00000494149.2;gene_id=ENSG00000227232.5;transcript_id=ENST00000494149.2;gene_type=unprocessed_pseudogene;gene_name=WASH7P;transcript_type=processed_transcript;transcript_name=WASH7P-202;exon_number=2;exon_id=ENSE00001960021.1;level=2;transcript_support_level=NA;hgnc_id=HGNC:38034;tag=basic;havana_gene=OTTHUMG00000000958.1;havana_transcript=OTTHUMT00000002840.2
###
chr1  HAVANA  gene  944203  959309  .  -  .  ID=ENSG00000188976.11;gene_id=ENSG00000188976.11;gene_type=protein_coding;gene_name=NOC2L;level=2;hgnc_id=HGNC:24517;havana_gene=OTTHUMG00000040720.2
chr1  HAVANA  transcript  944203  959309  .  -  .  ID=ENST00000327044.7;Parent=ENSG00000188976.11;gene_id=ENSG00000188976.11;transcript_id=ENST00000327044.7;gene_type=protein_coding;gene_name=NOC2L;transcript_type=protein_coding;transcript_name=NOC2L-201;level=2;protein_id=ENSP00000317992.6;transcript_support_level=1;hgnc_id=HGNC:24517;tag=basic,Ensembl_canonical,MANE_Select,appris_principal_1,CCDS;ccdsid=CCDS3.1;havana_gene=OTTHUMG00000040720.2;havana_transcript=OTTHUMT00000316521.3
chr1  HAVANA  exon  959215  959309  .  -  .  ID=exon:ENST00000327044.7:1;Parent=ENST00000327044.7;gene_id=ENSG00000188976.11;transcript_id=ENST00000327044.7;gene_type=protein_coding;gene_name=NOC2L;transcript_type=protein_coding;transcript_name=NOC2L-201;exon_number=1;exon_id=ENSE00001269873.4;level=2;protein_id=ENSP00000317992.6;transcript_support_level=1;hgnc_id=HGNC:24517;tag=basic,Ensembl_canonical,MANE_Select,appris_principal_1,CCDS;ccdsid=CCDS3.1;havana_gene=OTTHUMG00000040720.2;havana_transcript=OTTHUMT00000316521.3
chr1  HAVANA  CDS  959215  959240  .  -  0  ID=CDS:ENST00000327044.7;Parent=ENST00000327044.7;gene_id=ENSG00000188976.11;transcript_id=ENST00000327044.7;gene_type=protein_coding;gene_name=NOC2L;transcript_type=protein_coding;transcript_name=NOC2L-201;exon_number=1;exon_id=ENSE00001269873.4;level=2;protein_id=ENSP00000317992.6;transcript_support_level=1;hgnc_id=HGNC:24517;tag=basic,Ensembl_canonical,MANE_Select,appris_principal_1,CCDS;ccdsid=CCDS3.1;havana_gene=OTTHUMG00000040720.2;havana_transcript=OTTHUMT00000316521.3
chr1  HAVANA  exon  958929  959081  .  -  .  ID=exon:ENST00000327044.7:2;Parent=ENST00000327044.7;gene_id=ENSG00000188976.11;transcript_id=ENST00000327044.7;gene_type=protein_coding;gene_name=NOC2L;transcript_type=protein_coding;transcript_name=NOC2L-201;exon_number=2;exon_id=ENSE00003477353.1;level=2;protein_id=ENSP00000317992.6;transcript_support_level=1;hgnc_id=HGNC:24517;tag=basic,Ensembl_canonical,MANE_Select,appris_principal_1,CCDS;ccdsid=CCDS3.1;havana_gene=OTTHUMG00000040720.2;havana_transcript=OTTHUMT00000316521.3
chr1  HAVANA  exon  944203  944800  .  -  .  ID=exon:ENST00000327044.7:3;Parent=ENST00000327044.7;gene_id=ENSG00000188976.11;transcript_id=ENST00000327044.7;gene_type=protein_coding;gene_name=NOC2L;transcript_type=protein_coding;transcript_name=NOC2L-201;exon_number=3;exon_id=ENSE00001478360.2;level=2;protein_id=ENSP00000317992.6;transcript_support_level=1;hgnc_id=HGNC:24517;tag=basic,Ensembl_canonical,MANE_Select,appris_principal_1,CCDS;ccdsid=CCDS3.1;havana_gene=OTTHUMG00000040720.2;havana_transcript=OTTHUMT00000316521.3
chr1  HAVANA  start_codon  959238  959240  .  -  0  ID=start_codon:ENST00000327044.7;Parent=ENST00000327044.7;gene_id=ENSG00000188976.11;transcript_id=ENST00000327044.7;gene_type=protein_coding;gene_name=NOC2L;transcript_type=protein_coding;transcript_name=NOC2L-201;exon_number=1;exon_id=ENSE00001269873.4;level=2;protein_id=ENSP00000317992.6;transcript_support_level=1;hgnc_id=HGNC:24517;tag=basic,Ensembl_canonical,MANE_Select,appris_principal_1,CCDS;ccdsid=CCDS3.1;havana_gene=OTTHUMG00000040720.2;havana_transcript=OTTHUMT00000316521.3
chr1  HAVANA  five_prime_UTR  959241  959309  .  -  .  ID=UTR5:ENST00000327044.7;Parent=ENST00000327044.7;gene_id=ENSG00000188976.11;transcript_id=ENST00000327044.7;gene_type=protein_coding;gene_name=NOC2L;transcript_type=protein_coding;transcript_name=NOC2L-201;exon_number=1;exon_id=ENSE00001269873.4;level=2;protein_id=ENSP00000317992.6;transcript_support_level=1;hgnc_id=HGNC:24517;tag=basic,Ensembl_canonical,MANE_Select,appris_principal_1,CCDS;ccdsid=CCDS3.1;havana_gene=OTTHUMG00000040720.2;havana_transcript=OTTHUMT00000316521.3
chr1  HAVANA  transcript  944203  959309  .  -  .  ID=ENST00000487214.1;Parent=ENSG00000188976.11;gene_id=ENSG00000188976.11;transcript_id=ENST00000487214.1;gene_type=protein_coding;gene_name=NOC2L;transcript_type=processed_transcript;transcript_name=NOC2L-202;level=2;transcript_support_level=2;hgnc_id=HGNC:24517;tag=basic;havana_gene=OTTHUMG00000040720.2;havana_transcript=OTTHUMT00000097862.2
chr1  HAVANA  exon  959000  959309  .  -  .  ID=exon:ENST00000487214.1:1;Parent=ENST00000487214.1;gene_id=ENSG00000188976.11;transcript_id=ENST00000487214.1;gene_type=protein_coding;gene_name=NOC2L;transcript_type=processed_transcript;transcript_name=NOC2L-202;exon_number=1;exon_id=ENSE00001896364.1;level=2;transcript_support_level=2;hgnc_id=HGNC:24517;tag=basic;havana_gene=OTTHUMG00000040720.2;havana_transcript=OTTHUMT00000097862.2
chr1  HAVANA  exon  944203  945000  .  -  .  ID=exon:ENST00000487214.1:2;Parent=ENST00000487214.1;gene_id=ENSG00000188976.11;transcript_id=ENST00000487214.1;gene_type=protein_coding;gene_name=NOC2L;transcript_type=processed_transcript;transcript_name=NOC2L-202;exon_number=2;exon_id=ENSE00001896365.1;level=2;transcript_support_level=2;hgnc_id=HGNC:24517;tag=basic;havana_gene=OTTHUMG00000040720.2;havana_transcript=OTTHUMT00000097862.2
###
##sequence-region chr10 1 133797422
chr10  HAVANA  gene  180405  254001  .  +  .  ID=ENSG00000015171.20;gene_id=ENSG00000015171.20;gene_type=protein_coding;gene_name=ZMYND11;level=2;hgnc_id=HGNC:16966;havana_gene=OTTHUMG00000017526.9
chr10  HAVANA  transcript  180405  254001  .  +  .  ID=ENST00000381604.9;Parent=ENSG00000015171.20;gene_id=ENSG00000015171.20;transcript_id=ENST00000381604.9;gene_type=protein_coding;gene_name=ZMYND11;transcript_type=protein_coding;transcript_name=ZMYND11-204;level=2;protein_id=ENSP00000371017.4;transcript_support_level=1;hgnc_id=HGNC:16966;tag=basic,Ensembl_canonical,MANE_Select,CCDS;ccdsid=CCDS7054.1;havana_gene=OTTHUMG00000017526.9;havana_transcript=OTTHUMT00000046505.2
chr10  HAVANA  exon  180405  180550  .  +  .  ID=exon:ENST00000381604.9:1;Parent=ENST00000381604.9;gene_id=ENSG00000015171.20;transcript_id=ENST00000381604.9;gene_type=protein_coding;gene_name=ZMYND11;transcript_type=protein_coding;transcript_name=ZMYND11-204;exon_number=1;exon_id=ENSE00001488361.2;level=2;protein_id=ENSP00000371017.4;transcript_support_level=1;hgnc_id=HGNC:16966;tag=basic,Ensembl_canonical,MANE_Select,CCDS;ccdsid=CCDS7054.1;havana_gene=OTTHUMG00000017526.9;havana_transcript=OTTHUMT00000046505.2
chr10  HAVANA  exon  253000  254001  .  +  .  ID=exon:ENST00000381604.9:2;Parent=ENST00000381604.9;gene_id=ENSG00000015171.20;transcript_id=ENST00000381604.9;gene_type=protein_coding;gene_name=ZMYND11;transcript_type=protein_coding;transcript_name=ZMYND11-204;exon_number=2;exon_id=ENSE00001488362.1;level=2;protein_id=ENSP00000371017.4;transcript_support_level=1;hgnc_id=HGNC:16966;tag=basic,Ensembl_canonical,MANE_Select,CCDS;ccdsid=CCDS7054.1;havana_gene=OTTHUMG00000017526.9;havana_transcript=OTTHUMT00000046505.2
###
##sequence-region chr2 1 242193529
chr2  HAVANA  gene  38814  46588  .  -  .  ID=ENSG00000184731.6;gene_id=ENSG00000184731.6;gene_type=protein_coding;gene_name=FAM110C;level=2;hgnc_id=HGNC:33340;havana_gene=OTTHUMG00000151321.2
chr2  HAVANA  transcript  38814  46588  .  -  .  ID=ENST00000327669.5;Parent=ENSG00000184731.6;gene_id=ENSG00000184731.6;transcript_id=ENST00000327669.5;gene_type=protein_coding;gene_name=FAM110C;transcript_type=protein_coding;transcript_name=FAM110C-201;level=2;protein_id=ENSP00000328347.4;transcript_support_level=1;hgnc_id=HGNC:33340;tag=basic,Ensembl_canonical,MANE_Select,CCDS;ccdsid=CCDS42645.1;havana_gene=OTTHUMG00000151321.2;havana_transcript=OTTHUMT00000322220.2
chr2  HAVANA  exon  46400  46588  .  -  .  ID=exon:ENST00000327669.5:1;Parent=ENST00000327669.5;gene_id=ENSG00000184731.6;transcript_id=ENST00000327669.5;gene_type=protein_coding;gene_name=FAM110C;transcript_type=protein_coding;transcript_name=FAM110C-201;exon_number=1;exon_id=ENSE00001310500.2;level=2;protein_id=ENSP00000328347.4;transcript_support_level=1;hgnc_id=HGNC:33340;tag=basic,Ensembl_canonical,MANE_Select,CCDS;ccdsid=CCDS42645.1;havana_gene=OTTHUMG00000151321.2;havana_transcript=OTTHUMT00000322220.2
chr2  HAVANA  exon  38814  41000  .  -  .  ID=exon:ENST00000327669.5:2;Parent=ENST00000327669.5;gene_id=ENSG00000184731.6;transcript_id=ENST00000327669.5;gene_type=protein_coding;gene_name=FAM110C;transcript_type=protein_coding;transcript_name=FAM110C-201;exon_number=2;exon_id=ENSE00001310501.3;level=2;protein_id=ENSP00000328347.4;transcript_support_level=1;hgnc_id=HGNC:33340;tag=basic,Ensembl_canonical,MANE_Select,CCDS;ccdsid=CCDS42645.1;havana_gene=OTTHUMG00000151321.2;havana_transcript=OTTHUMT00000322220.2
###
##sequence-region chrX 1 156040895
chrX  HAVANA  gene  276322  303356  .  +  .  ID=ENSG00000182378.14;gene_id=ENSG00000182378.14;gene_type=protein_coding;gene_name=PLCXD1;level=2;hgnc_id=HGNC:23148;tag=PAR;havana_gene=OTTHUMG00000021074.8
chrX  HAVANA  transcript  276322  303356  .  +  .  ID=ENST00000381657.7;Parent=ENSG00000182378.14;gene_id=ENSG00000182378.14;transcript_id=ENST00000381657.7;gene_type=protein_coding;gene_name=PLCXD1;transcript_type=protein_coding;transcript_name=PLCXD1-201;level=2;protein_id=ENSP00000371073.2;transcript_support_level=1;hgnc_id=HGNC:23148;tag=basic,Ensembl_canonical,MANE_Select,CCDS;ccdsid=CCDS14107.1;havana_gene=OTTHUMG00000021074.8;havana_transcript=OTTHUMT00000055650.3
chrX  HAVANA  exon  276322  276394  .  +  .  ID=exon:ENST00000381657.7:1;Parent=ENST00000381657.7;gene_id=ENSG00000182378.14;transcript_id=ENST00000381657.7;gene_type=protein_coding;gene_name=PLCXD1;transcript_type=protein_coding;transcript_name=PLCXD1-201;exon_number=1;exon_id=ENSE00001489177.2;level=2;protein_id=ENSP00000371073.2;transcript_support_level=1;hgnc_id=HGNC:23148;tag=basic,Ensembl_canonical,MANE_Select,CCDS;ccdsid=CCDS14107.1;havana_gene=OTTHUMG00000021074.8;havana_transcript=OTTHUMT00000055650.3
chrX  HAVANA  exon  300500  303356  .  +  .  ID=exon:ENST00000381657.7:2;Parent=ENST00000381657.7;gene_id=ENSG00000182378.14;transcript_id=ENST00000381657.7;gene_type=protein_coding;gene_name=PLCXD1;transcript_type=protein_coding;transcript_name=PLCXD1-201;exon_number=2;exon_id=ENSE00001489178.1;level=2;protein_id=ENSP00000371073.2;transcript_support_level=1;hgnc_id=HGNC:23148;tag=basic,Ensembl_canonical,MANE_Select,CCDS;ccdsid=CCDS14107.1;havana_gene=OTTHUMG00000021074.8;havana_transcript=OTTHUMT00000055650.3
###
##sequence-region chrY 1 57227415
chrY  HAVANA  gene  276322  303356  .  +  .  ID=ENSG00000182378.14_PAR_Y;gene_id=ENSG00000182378.14_PAR_Y;gene_type=protein_coding;gene_name=PLCXD1;level=2;hgnc_id=HGNC:23148;tag=PAR;havana_gene=OTTHUMG00000021074.8
chrY  HAVANA  transcript  276322  303356  .  +  .  ID=ENST00000381657.7_PAR_Y;Parent=ENSG00000182378.14_PAR_Y;gene_id=ENSG00000182378.14_PAR_Y;transcript_id=ENST00000381657.7_PAR_Y;gene_type=protein_coding;gene_name=PLCXD1;transcript_type=protein_coding;transcript_name=PLCXD1-201;level=2;protein_id=ENSP00000371073.2;transcript_support_level=1;hgnc_id=HGNC:23148;tag=basic,Ensembl_canonical,MANE_Select,CCDS,PAR;ccdsid=CCDS14107.1;havana_gene=OTTHUMG00000021074.8;havana_transcript=OTTHUMT00000055650.3
chrY  HAVANA  exon  276322  276394  .  +  .  ID=exon:ENST00000381657.7_PAR_Y:1;Parent=ENST00000381657.7_PAR_Y;gene_id=ENSG00000182378.14_PAR_Y;transcript_id=ENST00000381657.7_PAR_Y;gene_type=protein_coding;gene_name=PLCXD1;transcript_type=protein_coding;transcript_name=PLCXD1-201;exon_number=1;exon_id=ENSE00001489177.2;level=2;protein_id=ENSP00000371073.2;transcript_support_level=1;hgnc_id=HGNC:23148;tag=basic,Ensembl_canonical,MANE_Select,CCDS,PAR;ccdsid=CCDS14107.1;havana_gene=OTTHUMG00000021074.8;havana_transcript=OTTHUMT00000055650.3
###
"""

GENCODE_GTF = """\
##description: evidence-based annotation of the human genome (GRCh38), version 41 (Ensembl 107) - basic transcripts
##provider: GENCODE
##contact: gencode-help@ebi.ac.uk
##format: gtf
##date: 2022-05-12
chr1  HAVANA  gene  11869  14409  .  +  .  gene_id "ENSG00000223972.5"; gene_type "transcribed_unprocessed_pseudogene"; gene_name "DDX11L1"; level 2; hgnc_id "HGNC:37102"; havana_gene "OTTHUMG00000000961.2";
chr1  HAVANA  transcript  11869  14409  .  +  .  gene_id "ENSG00000223972.5"; transcript_id "ENST00000456328.2"; gene_type "transcribed_unprocessed_pseudogene"; gene_name "DDX11L1"; transcript_type "processed_transcript"; transcript_name "DDX11L1-202"; level 2; transcript_support_level "1"; hgnc_id "HGNC:37102"; tag "basic"; havana_gene "OTTHUMG00000000961.2"; havana_transcript "OTTHUMT00000362751.1";
chr1  HAVANA  exon  11869  12227  .  +  .  gene_id "ENSG00000223972.5"; transcript_id "ENST00000456328.2"; gene_type "transcribed_unprocessed_pseudogene"; gene_name "DDX11L1"; transcript_type "processed_transcript"; transcript_name "DDX11L1-202"; exon_number 1; exon_id "ENSE00002234944.1"; level 2; transcript_support_level "1"; hgnc_id "HGNC:37102"; tag "basic"; havana_gene "OTTHUMG00000000961.2"; havana_transcript "OTTHUMT00000362751.1";
chr1  HAVANA  exon  12613  12721  .  +  .  gene_id "ENSG00000223972.5"; transcript_id "ENST00000456328.2"; gene_type "transcribed_unprocessed_pseudogene"; gene_name "DDX11L1"; transcript_type "processed_transcript"; transcript_name "DDX11L1-202"; exon_number 2; exon_id "ENSE00003582793.1"; level 2; transcript_support_level "1"; hgnc_id "HGNC:37102"; tag "basic"; havana_gene "OTTHUMG00000000961.2"; havana_transcript "OTTHUMT00000362751.1";
chr1  HAVANA  exon  13221  14409  .  +  .  gene_id "ENSG00000223972.5"; transcript_id "ENST00000456328.2"; gene_type "transcribed_unprocessed_pseudogene"; gene_name "DDX11L1"; transcript_type "processed_transcript"; transcript_name "DDX11L1-202"; exon_number 3; exon_id "ENSE00002312635.1"; level 2; transcript_support_level "1"; hgnc_id "HGNC:37102"; tag "basic"; havana_gene "OTTHUMG00000000961.2"; havana_transcript "OTTHUMT00000362751.1";
chr1  HAVANA  transcript  12010  13670  .  +  .  gene_id "ENSG00000223972.5"; transcript_id "ENST00000450305.2"; gene_type "transcribed_unprocessed_pseudogene"; gene_name "DDX11L1"; transcript_type "transcribed_unprocessed_pseudogene"; transcript_name "DDX11L1-201"; level 2; transcript_support_level "NA"; hgnc_id "HGNC:37102"; ont "PGO:0000005"; ont "PGO:0000019"; tag "basic"; havana_gene "OTTHUMG00000000961.2"; havana_transcript "OTTHUMT00000002844.2";
chr1  HAVANA  exon  12010  12057  .  +  .  gene_id "ENSG00000223972.5"; transcript_id "ENST00000450305.2"; gene_type "transcribed_unprocessed_pseudogene"; gene_name "DDX11L1"; transcript_type "transcribed_unprocessed_pseudogene"; transcript_name "DDX11L1-201"; exon_number 1; exon_id "ENSE00001948541.1"; level 2; transcript_support_level "NA"; hgnc_id "HGNC:37102"; ont "PGO:0000005"; ont "PGO:0000019"; tag "basic"; havana_gene "OTTHUMG00000000961.2"; havana_transcript "OTTHUMT00000002844.2";
chr1  HAVANA  exon  12975  13052  .  +  .  gene_id "ENSG00000223972.5"; transcript_id "ENST00000450305.2"; gene_type "transcribed_unprocessed_pseudogene"; gene_name "DDX11L1"; transcript_type "transcribed_unprocessed_pseudogene"; transcript_name "DDX11L1-201"; exon_number 3; exon_id "ENSE00001758273.2"; level 2; transcript_support_level "NA"; hgnc_id "HGNC:37102"; ont "PGO:0000005"; ont "PGO:0000019"; tag "basic"; havana_gene "OTTHUMG00000000961.2"; havana_transcript "OTTHUMT00000002844.2";
chr1  HAVANA  gene  14404  29570  .  -  .  gene_id "ENSG00000227232.5"; gene_type "unprocessed_pseudogene"; gene_name "WASH7P"; level 2; hgnc_id "HGNC:38034"; havana_gene "OTTHUMG00000000958.1";
chr1  HAVANA  transcript  14404  29570  .  -  .  gene_id "ENSG00000227232.5"; transcript_id "ENST00000488147.1"; gene_type "unprocessed_pseudogene"; gene_name "WASH7P"; transcript_type "unprocessed_pseudogene"; transcript_name "WASH7P-201"; level 2; transcript_support_level "NA"; hgnc_id "HGNC:38034"; ont "PGO:0000005"; tag "basic"; tag "Ensembl_canonical"; havana_gene "OTTHUMG00000000958.1"; havana_transcript "OTTHUMT00000002839.1";
chr1  HAVANA  exon  29534  29570  .  -  .  gene_id "ENSG00000227232.5"; transcript_id "ENST00000488147.1"; gene_type "unprocessed_pseudogene"; gene_name "WASH7P"; transcript_type "unprocessed_pseudogene"; transcript_name "WASH7P-201"; exon_number 1; exon_id "ENSE00001890219.1"; level 2; transcript_support_level "NA"; hgnc_id "HGNC:38034"; ont "PGO:0000005"; tag "basic"; tag "Ensembl_canonical"; havana_gene "OTTHUMG00000000958.1"; havana_transcript "OTTHUMT00000002839.1";
chr1  HAVANA  exon  14404  14501  .  -  .  gene_id "ENSG00000227232.5"; transcript_id "ENST00000488147.1"; gene_type "unprocessed_pseudogene"; gene_name "WASH7P"; transcript_type "unprocessed_pseudogene"; transcript_name "WASH7P-201"; exon_number 3; exon_id "ENSE00001843071.1"; level 2; transcript_support_level "NA"; hgnc_id "HGNC:38034"; ont "PGO:0000005"; tag "basic"; tag "Ensembl_canonical"; havana_gene "OTTHUMG00000000958.1"; havana_transcript "OTTHUMT00000002839.1";
chr1  HAVANA  transcript  14404  29570  .  -  .  gene_id "ENSG00000227232.5"; transcript_id "ENST00000494149.2"; gene_type "unprocessed_pseudogene"; gene_name "WASH7P"; transcript_type "processed_transcript"; transcript_name "WASH7P-202"; level 2; transcript_support_level "NA"; hgnc_id "HGNC:38034"; tag "basic"; havana_gene "OTTHUMG00000000958.1"; havana_transcript "OTTHUMT00000002840.2";
chr1  HAVANA  exon  29000  29570  .  -  .  gene_id "ENSG00000227232.5"; transcript_id "ENST00000494149.2"; gene_type "unprocessed_pseudogene"; gene_name "WASH7P"; transcript_type "processed_transcript"; transcript_name "WASH7P-202"; exon_number 1; exon_id "ENSE00001960020.1"; level 2; transcript_support_level "NA"; hgnc_id "HGNC:38034"; tag "basic"; havana_gene "OTTHUMG00000000958.1"; havana_transcript "OTTHUMT00000002840.2";
chr1  HAVANA  gene  944203  959309  .  -  .  gene_id "ENSG00000188976.11"; gene_type "protein_coding"; gene_name "NOC2L"; level 2; hgnc_id "HGNC:24517"; havana_gene "OTTHUMG00000040720.2";
chr1  HAVANA  transcript  944203  959309  .  -  .  gene_id "ENSG00000188976.11"; transcript_id "ENST00000327044.7"; gene_type "protein_coding"; gene_name "NOC2L"; transcript_type "protein_coding"; transcript_name "NOC2L-201"; level 2; protein_id "ENSP00000317992.6"; transcript_support_level "1"; hgnc_id "HGNC:24517"; tag "basic"; tag "Ensembl_canonical"; tag "MANE_Select"; tag "appris_principal_1"; tag "CCDS"; ccdsid "CCDS3.1"; havana_gene "OTTHUMG00000040720.2"; havana_transcript "OTTHUMT00000316521.3";
chr1  HAVANA  exon  959215  959309  .  -  .  gene_id "ENSG00000188976.11"; transcript_id "ENST00000327044.7"; gene_type "protein_coding"; gene_name "NOC2L"; transcript_type "protein_coding"; transcript_name "NOC2L-201"; exon_number 1; exon_id "ENSE00001269873.4"; level 2; protein_id "ENSP00000317992.6"; transcript_support_level "1"; hgnc_id "HGNC:24517"; tag "basic"; tag "Ensembl_canonical"; tag "MANE_Select"; tag "appris_principal_1"; tag "CCDS"; ccdsid "CCDS3.1"; havana_gene "OTTHUMG00000040720.2"; havana_transcript "OTTHUMT00000316521.3";
chr1  HAVANA  CDS  959215  959240  .  -  0  gene_id "ENSG00000188976.11"; transcript_id "ENST00000327044.7"; gene_type "protein_coding"; gene_name "NOC2L"; transcript_type "protein_coding"; transcript_name "NOC2L-201"; exon_number 1; exon_id "ENSE00001269873.4"; level 2; protein_id "ENSP00000317992.6"; transcript_support_level "1"; hgnc_id "HGNC:24517"; tag "basic"; tag "Ensembl_canonical"; tag "MANE_Select"; tag "appris_principal_1"; tag "CCDS"; ccdsid "CCDS3.1"; havana_gene "OTTHUMG00000040720.2"; havana_transcript "OTTHUMT00000316521.3";
chr1  HAVANA  start_codon  959238  959240  .  -  0  gene_id "ENSG00000188976.11"; transcript_id "ENST00000327044.7"; gene_type "protein_coding"; gene_name "NOC2L"; transcript_type "protein_coding"; transcript_name "NOC2L-201"; exon_number 1; exon_id "ENSE00001269873.4"; level 2; protein_id "ENSP00000317992.6"; transcript_support_level "1"; hgnc_id "HGNC:24517"; tag "basic"; tag "Ensembl_canonical"; tag "MANE_Select"; tag "appris_principal_1"; tag "CCDS"; ccdsid "CCDS3.1"; havana_gene "OTTHUMG00000040720.2"; havana_transcript "OTTHUMT00000316521.3";
chr1  HAVANA  UTR  959241  959309  .  -  .  gene_id "ENSG00000188976.11"; transcript_id "ENST00000327044.7"; gene_type "protein_coding"; gene_name "NOC2L"; transcript_type "protein_coding"; transcript_name "NOC2L-201"; exon_number 1; exon_id "ENSE00001269873.4"; level 2; protein_id "ENSP00000317992.6"; transcript_support_level "1"; hgnc_id "HGNC:24517"; tag "basic"; tag "Ensembl_canonical"; tag "MANE_Select"; tag "appris_principal_1"; tag "CCDS"; ccdsid "CCDS3.1"; havana_gene "OTTHUMG00000040720.2"; havana_transcript "OTTHUMT00000316521.3";
chr1  HAVANA  exon  944203  944800  .  -  .  gene_id "ENSG00000188976.11"; transcript_id "ENST00000327044.7"; gene_type "protein_coding"; gene_name "NOC2L"; transcript_type "protein_coding"; transcript_name "NOC2L-201"; exon_number 2; exon_id "ENSE00001478360.2"; level 2; protein_id "ENSP00000317992.6"; transcript_support_level "1"; hgnc_id "HGNC:24517"; tag "basic"; tag "Ensembl_canonical"; tag "MANE_Select"; tag "appris_principal_1"; tag "CCDS"; ccdsid "CCDS3.1"; havana_gene "OTTHUMG00000040720.2"; havana_transcript "OTTHUMT00000316521.3";
chrX  HAVANA  gene  276322  303356  .  +  .  gene_id "ENSG00000182378.14"; gene_type "protein_coding"; gene_name "PLCXD1"; level 2; hgnc_id "HGNC:23148"; tag "PAR"; havana_gene "OTTHUMG00000021074.8";
chrX  HAVANA  exon  276322  276394  .  +  .  gene_id "ENSG00000182378.14"; transcript_id "ENST00000381657.7"; gene_type "protein_coding"; gene_name "PLCXD1"; transcript_type "protein_coding"; transcript_name "PLCXD1-201"; exon_number 1; exon_id "ENSE00001489177.2"; level 2; protein_id "ENSP00000371073.2"; transcript_support_level "1"; hgnc_id "HGNC:23148"; tag "basic"; tag "Ensembl_canonical"; tag "MANE_Select"; tag "CCDS"; ccdsid "CCDS14107.1"; havana_gene "OTTHUMG00000021074.8"; havana_transcript "OTTHUMT00000055650.3";
chrY  HAVANA  gene  276322  303356  .  +  .  gene_id "ENSG00000182378.14_PAR_Y"; gene_type "protein_coding"; gene_name "PLCXD1"; level 2; hgnc_id "HGNC:23148"; tag "PAR"; havana_gene "OTTHUMG00000021074.8";
chrY  HAVANA  exon  276322  276394  .  +  .  gene_id "ENSG00000182378.14_PAR_Y"; transcript_id "ENST00000381657.7_PAR_Y"; gene_type "protein_coding"; gene_name "PLCXD1"; transcript_type "protein_coding"; transcript_name "PLCXD1-201"; exon_number 1; exon_id "ENSE00001489177.2"; level 2; protein_id "ENSP00000371073.2"; transcript_support_level "1"; hgnc_id "HGNC:23148"; tag "basic"; tag "Ensembl_canonical"; tag "MANE_Select"; tag "CCDS"; tag "PAR"; ccdsid "CCDS14107.1"; havana_gene "OTTHUMG00000021074.8"; havana_transcript "OTTHUMT00000055650.3";
"""


def _tabs(text: str) -> str:
    lines = [ln if ln.startswith("#") else "\t".join(re.split(r" {2,}", ln, maxsplit=8))
             for ln in text.splitlines()]
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> Path:
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as fh:
            fh.write(_tabs(text))
    else:
        path.write_text(_tabs(text))
    return path


GENE_COLS = ["gene_name", "chrom", "start", "end", "strand", "gene_id", "gene_type"]
# Hand-converted from the snippet: 1-based closed [s, e] -> 0-based half-open [s - 1, e).
EXPECTED_GENES = pd.DataFrame([
    ("DDX11L1", "chr1", 11868, 14409, "+", "ENSG00000223972.5", "transcribed_unprocessed_pseudogene"),
    ("WASH7P", "chr1", 14403, 29570, "-", "ENSG00000227232.5", "unprocessed_pseudogene"),
    ("NOC2L", "chr1", 944202, 959309, "-", "ENSG00000188976.11", "protein_coding"),
    ("FAM110C", "chr2", 38813, 46588, "-", "ENSG00000184731.6", "protein_coding"),
    ("ZMYND11", "chr10", 180404, 254001, "+", "ENSG00000015171.20", "protein_coding"),
    ("PLCXD1", "chrX", 276321, 303356, "+", "ENSG00000182378.14", "protein_coding"),
], columns=GENE_COLS)
EXPECTED_EXONS = pd.DataFrame([
    ("DDX11L1", 11868, 12227, "merged"), ("DDX11L1", 12612, 12721, "merged"),
    ("DDX11L1", 12974, 13052, "merged"), ("DDX11L1", 13220, 14409, "merged"),
    ("WASH7P", 14403, 14501, "Ensembl_canonical"), ("WASH7P", 24737, 24891, "Ensembl_canonical"),
    ("WASH7P", 29533, 29570, "Ensembl_canonical"),
    ("NOC2L", 944202, 944800, "MANE_Select"), ("NOC2L", 958928, 959081, "MANE_Select"),
    ("NOC2L", 959214, 959309, "MANE_Select"),
    ("FAM110C", 38813, 41000, "MANE_Select"), ("FAM110C", 46399, 46588, "MANE_Select"),
    ("ZMYND11", 180404, 180550, "MANE_Select"), ("ZMYND11", 252999, 254001, "MANE_Select"),
    ("PLCXD1", 276321, 276394, "MANE_Select"), ("PLCXD1", 300499, 303356, "MANE_Select"),
], columns=["gene_name", "start", "end", "exon_source"])
GTF_EXONS = {("DDX11L1", 11868, 12227), ("DDX11L1", 12612, 12721), ("DDX11L1", 12974, 13052),
             ("DDX11L1", 13220, 14409), ("WASH7P", 14403, 14501), ("WASH7P", 29533, 29570),
             ("NOC2L", 944202, 944800), ("NOC2L", 959214, 959309), ("PLCXD1", 276321, 276394)}


@pytest.mark.parametrize("name", ["gencode.gff3", "gencode.gff3.gz", "annotation.txt"])
def test_read_gene_annotation__gencode_gff3(tmp_path, name):
    genes, exons = read_gene_annotation(_write(tmp_path / name, GENCODE_GFF3))
    pd.testing.assert_frame_equal(genes, EXPECTED_GENES)
    assert genes["start"].dtype == np.int64 and genes["end"].dtype == np.int64
    got = exons[["gene_name", "start", "end", "exon_source"]]
    pd.testing.assert_frame_equal(got, EXPECTED_EXONS)
    # Exons take chromosome and strand from their gene; canonical ones keep the transcript.
    by_gene = EXPECTED_GENES.set_index("gene_name")
    assert (exons["chrom"].to_numpy() == by_gene.loc[exons["gene_name"], "chrom"].to_numpy()).all()
    assert (exons["strand"].to_numpy() == by_gene.loc[exons["gene_name"], "strand"].to_numpy()).all()
    noc2l = exons[exons["gene_name"] == "NOC2L"]
    assert set(noc2l["transcript_id"]) == {"ENST00000327044.7"}
    assert noc2l["exon_number"].tolist() == [3, 2, 1]  # minus strand: exon 1 is rightmost
    assert exons.loc[exons["exon_source"] == "merged", "transcript_id"].isna().all()


@pytest.mark.parametrize("name", ["gencode.gtf", "gencode.gtf.gz"])
def test_read_gene_annotation__gencode_gtf(tmp_path, name):
    genes, exons = read_gene_annotation(_write(tmp_path / name, GENCODE_GTF))
    expected = EXPECTED_GENES[EXPECTED_GENES["gene_name"].isin(["DDX11L1", "WASH7P", "NOC2L", "PLCXD1"])]
    pd.testing.assert_frame_equal(genes, expected.reset_index(drop=True))
    assert set(exons[["gene_name", "start", "end"]].itertuples(index=False, name=None)) == GTF_EXONS
    assert len(exons) == len(GTF_EXONS)
    # GENCODE GTF repeats `tag` per tag; all of them count (MANE_Select is the third of five).
    assert set(exons.loc[exons["gene_name"] == "NOC2L", "exon_source"]) == {"MANE_Select"}
    assert set(exons.loc[exons["gene_name"] == "WASH7P", "exon_source"]) == {"Ensembl_canonical"}


def test_read_gene_annotation__coordinates_one_based_to_half_open(tmp_path):
    path = _write(tmp_path / "a.gff3", GENCODE_GFF3)
    rows = [ln.split("\t") for ln in path.read_text().splitlines() if not ln.startswith("#")]
    raw = {re.search(r"gene_name=([^;]+)", r[8]).group(1): (int(r[3]), int(r[4]))
           for r in rows if r[2] == "gene" and r[0] != "chrY"}
    genes, exons = read_gene_annotation(path)
    for g in genes.itertuples():
        first, last = raw[g.gene_name]
        assert (g.start, g.end) == (first - 1, last)
        assert g.end - g.start == last - first + 1  # same number of bases
    canonical = {(int(r[3]) - 1, int(r[4])) for r in rows
                 if r[2] == "exon" and "MANE_Select" in r[8] and r[0] != "chrY"}
    assert canonical == set(exons.loc[exons["exon_source"] == "MANE_Select", ["start", "end"]]
                            .itertuples(index=False, name=None))
    # TSS (start on +, end on -) in 0-based terms: the first transcribed base.
    tss = np.where(genes["strand"] == "+", genes["start"], genes["end"])
    assert dict(zip(genes["gene_name"], tss))["NOC2L"] == 959309


def test_read_gene_annotation__duplicate_names_keep_first(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="p2g_dask"):
        genes, exons = read_gene_annotation(_write(tmp_path / "a.gff3", GENCODE_GFF3))
    assert genes["gene_name"].is_unique
    assert genes.loc[genes["gene_name"] == "PLCXD1", "chrom"].tolist() == ["chrX"]
    assert "chrY" not in set(exons["chrom"])
    assert any("dropped 1 gene" in r.getMessage() for r in caplog.records)


def test_read_gene_annotation__gene_types_chromosomes_and_merged(tmp_path):
    path = _write(tmp_path / "a.gff3", GENCODE_GFF3)
    genes, exons = read_gene_annotation(path, gene_types=["protein_coding"], chromosomes=["chr1", "chr2"],
                                        exon_model="merged")
    assert genes["gene_name"].tolist() == ["NOC2L", "FAM110C"]
    # NOC2L's two transcripts, unioned: [944202, 944800) u [944202, 945000) and three 5' exons.
    noc2l = exons[exons["gene_name"] == "NOC2L"][["start", "end"]].values.tolist()
    assert noc2l == [[944202, 945000], [958928, 959309]]
    assert set(exons["exon_source"]) == {"merged"}
    with pytest.raises(ValueError, match="gene_types=\\['snRNA'\\] matches no gene.*protein_coding"):
        read_gene_annotation(path, gene_types="snRNA")
    with pytest.raises(ValueError, match="chromosomes=\\['1'\\] matches no gene.*chr1"):
        read_gene_annotation(path, chromosomes=["1"])
    with pytest.raises(ValueError, match="exon_model='all'.*canonical"):
        read_gene_annotation(path, exon_model="all")


def test_read_gene_annotation__gtf_without_gene_rows(tmp_path):
    text = "\n".join(ln for ln in GENCODE_GTF.splitlines() if "  gene  " not in ln and "  transcript  " not in ln)
    genes, exons = read_gene_annotation(_write(tmp_path / "ucsc.gtf", text))
    # Gene extents come from the exons: WASH7P spans its exons 14404..29570 (1-based).
    wash = genes.set_index("gene_name").loc["WASH7P"]
    assert (wash["start"], wash["end"], wash["strand"]) == (14403, 29570, "-")
    assert genes.set_index("gene_name").loc["PLCXD1", "end"] == 276394


def test_read_gene_annotation__gff_unstranded_gene_skipped(tmp_path, caplog):
    text = GENCODE_GFF3.replace("chr2  HAVANA  gene  38814  46588  .  -", "chr2  HAVANA  gene  38814  46588  .  .")
    with caplog.at_level(logging.WARNING, logger="p2g_dask"):
        genes, exons = read_gene_annotation(_write(tmp_path / "a.gff3", text))
    assert "FAM110C" not in set(genes["gene_name"]) and "FAM110C" not in set(exons["gene_name"])
    assert len(genes) == len(EXPECTED_GENES) - 1
    assert any("without a +/- strand (e.g. FAM110C)" in r.getMessage() for r in caplog.records)


def test_select_exons__mane_before_ensembl_canonical():
    exons = pd.DataFrame({
        "gene_key": ["g"] * 4, "chrom": "chr1", "start": [0, 50, 10, 60], "end": [20, 80, 30, 90],
        "strand": "+", "transcript_id": ["a", "a", "b", "b"],
        "tags": ["basic,Ensembl_canonical"] * 2 + ["basic,MANE_Select"] * 2,
    })
    out = _gff.select_exons(exons, "canonical")
    assert out["transcript_id"].tolist() == ["b", "b"] and set(out["exon_source"]) == {"MANE_Select"}
    merged = _gff.select_exons(exons, "merged")
    assert merged[["start", "end"]].values.tolist() == [[0, 30], [50, 90]]


def test_read_gene_annotation__dataframe_validation():
    good = pd.DataFrame({"gene_name": ["A"], "chrom": ["chr1"], "start": [10], "end": [20], "strand": ["+"]})
    with pytest.raises(ValueError, match=r"missing columns \['strand'\]"):
        read_gene_annotation(good.drop(columns="strand"))
    with pytest.raises(ValueError, match=r"strand'\] has values \['\.', '1'\].*map them to '\+' / '-'"):
        read_gene_annotation(pd.concat([good, good.assign(strand="."), good.assign(strand=1)]))
    with pytest.raises(ValueError, match=r"end <= start.*'A' \(chr1:20-20\)"):
        read_gene_annotation(good.assign(start=20))
    with pytest.raises(FileNotFoundError, match="path_or_df='/no/such.gtf' is not a file"):
        read_gene_annotation("/no/such.gtf")
    renamed = good.rename(columns={"chrom": "Chromosome", "start": "Start", "end": "End", "strand": "Strand"})
    pd.testing.assert_frame_equal(read_gene_annotation(renamed)[0], good)
    import pyranges

    pd.testing.assert_frame_equal(read_gene_annotation(pyranges.PyRanges(renamed))[0], good)


def test_read_gene_annotation__simulated_dataframes():
    sim = p2g.datasets.simulate_multiome(n_cells=40, n_peaks=300, n_genes=30, n_linked_genes=5, seed=3)
    genes, exons = read_gene_annotation(sim.genes, exons=sim.exons)
    rank = {c: i for i, c in enumerate(sim.chrom_sizes)}  # chr1..chr5: karyotype order is name order
    want = sim.genes.assign(r=sim.genes["chrom"].map(rank)).sort_values(["r", "start"]).drop(columns="r")
    pd.testing.assert_frame_equal(genes, want.reset_index(drop=True))
    want_ex = sim.exons.assign(r=sim.exons["chrom"].map(rank)).sort_values(["r", "start", "end"])
    pd.testing.assert_frame_equal(exons, want_ex.drop(columns="r").reset_index(drop=True))
    _, none = read_gene_annotation(sim.genes)
    assert none.empty and list(none.columns) == ["gene_name", "chrom", "start", "end", "strand"]


def test_read_gene_annotation__bed_tables(tmp_path):
    (tmp_path / "genes.bed").write_text("chr2\t100\t900\tB\t0\t-\nchr1\t5\t50\tA\t0\t+\n")
    (tmp_path / "exons.bed").write_text("chr1\t5\t20\tE1\tA\t1\tT1\nchr1\t30\t50\tE2\tA\t2\tT1\n"
                                        "chr2\t800\t900\tE3\tB\t1\tT2\nchr9\t1\t2\tE4\tZ\t1\tT3\n")
    genes, exons = read_gene_annotation(tmp_path / "genes.bed", exons=tmp_path / "exons.bed")
    assert genes[["gene_name", "chrom", "start", "end", "strand"]].values.tolist() == [
        ["A", "chr1", 5, 50, "+"], ["B", "chr2", 100, 900, "-"]]
    assert exons[["gene_name", "start", "end", "strand", "transcript_id"]].values.tolist() == [
        ["A", 5, 20, "+", "T1"], ["A", 30, 50, "+", "T1"], ["B", 800, 900, "-", "T2"]]
    # A gzip BED12 whose name does not say so: detected from its bytes, first six columns used.
    with gzip.open(tmp_path / "genes12.txt", "wt") as fh:
        fh.write("chr2\t100\t900\tB\t0\t-\t100\t900\t0\t1\t800,\t0,\n")
    assert read_gene_annotation(tmp_path / "genes12.txt")[0]["end"].tolist() == [900]


def _karyotype_sorted(df):
    order = {f"chr{c}": i for i, c in enumerate([*range(1, 23), "X", "Y", "M"])}
    return df.assign(r=df["chrom"].map(order)).sort_values(["r", "start", "end"], kind="stable").drop(columns="r")


@pytest.mark.real_data("the reader on GENCODE v44's 62,700 genes and MANE exons (duplicated names, all chromosomes)")
def test_read_gene_annotation__hg38_gene_table_and_exon_bed(shared_data):
    HG38 = shared_data / "hg38"
    genes, exons = read_gene_annotation(HG38 / "hg38_genes.tsv.gz", exons=HG38 / "hg38_exons.bed.gz")
    raw = pd.read_csv(HG38 / "hg38_genes.tsv.gz", sep="\t").rename(columns={"#contig": "chrom"})
    want = _karyotype_sorted(raw.drop_duplicates("gene_name", keep="first"))
    pd.testing.assert_frame_equal(genes, want[GENE_COLS].reset_index(drop=True))
    ex = pd.read_csv(HG38 / "hg38_exons.bed.gz", sep="\t").rename(columns={"#contig": "chrom"})
    ex = ex.merge(want[["gene_name", "chrom", "strand"]], on=["gene_name", "chrom"])
    assert len(exons) == len(ex) > 190_000
    assert (exons["end"] - exons["start"]).sum() == (ex["end"] - ex["start"]).sum()
    assert exons["strand"].isin(["+", "-"]).all()


@pytest.mark.parametrize("fmt", ["gff3", "gtf"])
@pytest.mark.real_data("GFF3/GTF text of GENCODE's own genes and MANE exons on chr21, chr22, chrX, chrY (PAR genes)")
def test_read_gene_annotation__hg38_roundtrip_through_gencode_text(shared_data, tmp_path, fmt):
    HG38 = shared_data / "hg38"
    chroms = ["chr21", "chr22", "chrX", "chrY"]
    genes_t, exons_t = read_gene_annotation(HG38 / "hg38_genes.tsv.gz", exons=HG38 / "hg38_exons.bed.gz",
                                            chromosomes=chroms)
    raw = pd.read_csv(HG38 / "hg38_genes.tsv.gz", sep="\t").rename(columns={"#contig": "chrom"})
    raw = raw[raw["chrom"].isin(chroms)]
    ex = pd.read_csv(HG38 / "hg38_exons.bed.gz", sep="\t").rename(columns={"#contig": "chrom"})
    ex = ex.merge(raw[["gene_name", "chrom", "gene_id", "strand"]].drop_duplicates(["gene_name", "chrom"]))
    lines = []
    for g in raw.itertuples():  # GENCODE text, 1-based closed
        a = (f'gene_id "{g.gene_id}"; gene_type "{g.gene_type}"; gene_name "{g.gene_name}";' if fmt == "gtf"
             else f"ID={g.gene_id};gene_id={g.gene_id};gene_type={g.gene_type};gene_name={g.gene_name}")
        lines.append(f"{g.chrom}\tHAVANA\tgene\t{g.start + 1}\t{g.end}\t.\t{g.strand}\t.\t{a}")
    for e in ex.itertuples():
        a = (f'gene_id "{e.gene_id}"; transcript_id "{e.transcript_id}"; gene_name "{e.gene_name}"; '
             f'tag "basic"; tag "MANE_Select";' if fmt == "gtf"
             else f"ID={e.exon_id};Parent={e.transcript_id};gene_id={e.gene_id};tag=basic,MANE_Select")
        lines.append(f"{e.chrom}\tHAVANA\texon\t{e.start + 1}\t{e.end}\t.\t{e.strand}\t.\t{a}")
    if fmt == "gff3":  # transcripts link exons to genes through Parent
        for t in ex.drop_duplicates("transcript_id").itertuples():
            lines.append(f"{t.chrom}\tHAVANA\ttranscript\t1\t2\t.\t{t.strand}\t.\t"
                         f"ID={t.transcript_id};Parent={t.gene_id};tag=basic,MANE_Select")
    path = tmp_path / f"gencode.{fmt}.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(("##gff-version 3\n" if fmt == "gff3" else "") + "\n".join(lines) + "\n")
    genes_g, exons_g = read_gene_annotation(path)
    pd.testing.assert_frame_equal(genes_g, genes_t)
    cols = ["gene_name", "chrom", "start", "end", "strand", "transcript_id"]
    pd.testing.assert_frame_equal(exons_g[cols], exons_t[cols])
    assert set(exons_g["exon_source"]) == {"MANE_Select"}


def test_read_chrom_sizes__forms(tmp_path):
    sizes = {"chr1": 1000, "chr2": 500, "chrM": 16}
    text = "".join(f"{c}\t{n}\n" for c, n in sizes.items())
    (tmp_path / "g.sizes").write_text("# comment\n" + text)
    with gzip.open(tmp_path / "g.sizes.gz", "wt") as fh:
        fh.write(text)
    (tmp_path / "g.fa.fai").write_text("".join(f"{c}\t{n}\t6\t60\t61\n" for c, n in sizes.items()))
    import pyranges

    gr = pyranges.from_dict({"Chromosome": ["chr1", "chr1", "chr2", "chrM"], "Start": [0, 5, 0, 0],
                             "End": [10, 1000, 500, 16]})
    forms = [sizes, tmp_path / "g.sizes", str(tmp_path / "g.sizes.gz"), tmp_path / "g.fa.fai",
             pd.DataFrame({"chrom": list(sizes), "length": list(sizes.values())}),
             pd.DataFrame([(c, float(n)) for c, n in sizes.items()]), gr]
    for form in forms:
        got = read_chrom_sizes(form)
        assert got == sizes and all(type(v) is int for v in got.values()), form
    assert read_chrom_sizes(p2g.genome.mm10) == p2g.genome.mm10.chrom_sizes
    assert read_chrom_sizes("hg38")["chr1"] == 248_956_422


def test_read_chrom_sizes__errors(tmp_path):
    with pytest.raises(ValueError, match="'chr2' has length -5"):
        read_chrom_sizes({"chr1": 10, "chr2": -5})
    with pytest.raises(ValueError, match="'chr1' appears twice with lengths 10 and 11"):
        read_chrom_sizes(pd.DataFrame({"chrom": ["chr1", "chr1"], "size": [10, 11]}))
    with pytest.raises(FileNotFoundError, match="sizes='nope.sizes' is not a file.*hg38"):
        read_chrom_sizes("nope.sizes")
    with pytest.raises(ValueError, match="name them chrom and size"):
        read_chrom_sizes(pd.DataFrame({"a": ["chr1"], "b": [1], "c": [2]}))


@pytest.mark.real_data("the shipped hg38 sizes against an independent copy (bioframe's hg38 report)")
def test_genome__hg38_chrom_sizes_match_shared_file(shared_data):
    HG38 = shared_data / "hg38"
    ref = pd.read_csv(HG38 / "hg38.chrom.sizes", sep="\t", header=None, names=["chrom", "size"])
    primary = ref[ref["chrom"].isin([f"chr{c}" for c in [*range(1, 23), "X", "Y", "M"]])]
    assert p2g.genome.hg38.chrom_sizes == dict(zip(primary["chrom"], primary["size"].astype(int)))


def test_genome__mm10_chrom_sizes():
    sizes = p2g.genome.mm10.chrom_sizes
    assert list(sizes) == [f"chr{c}" for c in [*range(1, 20), "X", "Y", "M"]]
    assert sizes["chrM"] == 16_299 and sizes["chr1"] == 195_471_971
    sizes["chr1"] = 1  # a copy: the shipped table cannot be changed by accident
    assert p2g.genome.mm10.chrom_sizes["chr1"] == 195_471_971


NUMERIC_IDS_GFF3 = """\
##gff-version 3
chr1  RefSeq  gene  101  500  .  +  .  ID=1;gene_name=ONE
chr1  RefSeq  mRNA  101  500  .  +  .  ID=11;Parent=1
chr1  RefSeq  exon  101  200  .  +  .  ID=111;Parent=11
chr1  RefSeq  exon  301  500  .  +  .  ID=112;Parent=11
chr2  RefSeq  gene  1001  2000  .  -  .  ID=2
chr2  RefSeq  exon  1001  2000  .  -  .  ID=211;Parent=2
"""


def test_read_gene_annotation__numeric_ids_no_pandas_futurewarning(tmp_path):
    # Numeric ids made pandas' fillna downcast object columns, with a FutureWarning on each read.
    path = _write(tmp_path / "numeric.gff3", NUMERIC_IDS_GFF3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        genes, exons = read_gene_annotation(path)
    assert genes[["gene_name", "chrom", "start", "end"]].values.tolist() == [["ONE", "chr1", 100, 500],
                                                                            ["2", "chr2", 1000, 2000]]
    assert exons.groupby("gene_name")["start"].apply(list).to_dict() == {"2": [1000], "ONE": [100, 300]}
    assert _gff._first_of(pd.DataFrame({"a": [np.nan, np.nan], "b": [np.nan, 1.0]}), ["a", "b"]).dtype == object
